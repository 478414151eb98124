"""What every request handler needs, built once in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from audioprep.shared.event_store import EventStore
from audioprep.shared.job_views import JobViews
from audioprep.shared.settings import Settings
from audioprep.shared.storage import Storage


@dataclass
class ApiContext:
    settings: Settings
    nc: Client
    js: JetStreamContext
    events: EventStore
    storage: Storage
    views: JobViews
    cache_kv: KeyValue
