"""The job view: what poll returns and what the projector stores in KV bucket `jobs`."""

from __future__ import annotations

from datetime import datetime

import msgspec

from audioprep.domain.events import ErrorInfo, JobResult
from audioprep.domain.kinds import TERMINAL_STATUSES, Kind, Status


class JobView(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """Folded state of one job; `seq` is the stream sequence of the last event applied."""

    job_id: str
    kind: Kind
    status: Status
    progress: int
    stage: str
    attempt: int
    created_at: datetime
    updated_at: datetime
    seq: int
    tenant: str = "default"
    result: JobResult | None = None
    error: ErrorInfo | None = None
    cancel_requested: bool = False
    download_url: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(JobView)


def encode_view(view: JobView) -> bytes:
    return _encoder.encode(view)


def decode_view(data: bytes) -> JobView:
    return _decoder.decode(data)
