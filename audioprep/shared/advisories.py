"""JetStream advisories we act on (only the fields we use)."""

from __future__ import annotations

from datetime import datetime

import msgspec


class MaxDeliveriesAdvisory(msgspec.Struct, frozen=True):
    """`io.nats.jetstream.advisory.v1.max_deliver`: a message was delivered max_deliver times."""

    stream: str
    consumer: str
    stream_seq: int
    deliveries: int = 0
    timestamp: datetime | None = None


_advisory_decoder = msgspec.json.Decoder(MaxDeliveriesAdvisory)


def decode_advisory(data: bytes) -> MaxDeliveriesAdvisory:
    return _advisory_decoder.decode(data)
