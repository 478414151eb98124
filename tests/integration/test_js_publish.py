"""Against a real nats-server: the hot path's JetStream publish (pre-encoded headers, one ack
subscription) stores the same message and answers like `js.publish`, through nats-py's
buffer and through the public-API fallback alike."""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client

from audioprep.shared.ids import new_job_id
from audioprep.shared.js_publish import (
    AckPublisher,
    fast_path_supported,
    header_block,
    header_value,
    parse_header_block,
)
from audioprep.shared.names import Names

NAMES = Names()
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _create_once(job_id: str, traceparent: str) -> dict[str, str]:
    return {
        "Nats-Msg-Id": job_id,
        "Nats-Expected-Last-Subject-Sequence": "0",
        "Nats-Expected-Last-Subject-Sequence-Subject": NAMES.job_subjects(job_id),
        "traceparent": traceparent,
    }


def _block(headers: dict[str, str]) -> bytes:
    return header_block(*((k.encode(), header_value(v)) for k, v in headers.items()))


def test_the_installed_nats_py_has_the_fast_path() -> None:
    # If this fails after a nats-py upgrade, publishes still work (the public fallback), but
    # the API's enqueue row loses what bench/RESULTS.md measured for this module.
    assert fast_path_supported(Client())


@pytest.mark.parametrize("fast", [True, False], ids=["buffer", "public"])
async def test_same_message_and_answers_as_js_publish(nc: Client, fast: bool) -> None:
    js = nc.jetstream()
    acks = AckPublisher(nc, fast=fast)
    ours, theirs = new_job_id(), new_job_id()
    payload = b'{"jobId":"x"}'
    # a value with spaces around it and a line break inside: written as nats-py writes it
    messy = f"  {TRACE[:20]}\r\n{TRACE[21:]} "
    ack = await acks.publish(
        NAMES.event_subject("save", ours, "requested"),
        payload,
        _block(_create_once(ours, messy)),
        timeout=5,
    )
    ref = await js.publish(
        NAMES.event_subject("save", theirs, "requested"),
        payload,
        headers=_create_once(theirs, messy),
    )
    assert ack.stream == ref.stream == NAMES.stream and ack.seq > 0 and ack.duplicate is None
    mine = await js.get_msg(NAMES.stream, ack.seq, direct=True)
    other = await js.get_msg(NAMES.stream, ref.seq, direct=True)
    assert mine.data == other.data == payload
    assert mine.subject == NAMES.event_subject("save", ours, "requested")

    def stored(headers: dict[str, str] | None, job_id: str) -> dict[str, str]:
        kept = {k: v for k, v in (headers or {}).items() if not k.startswith("Nats-S")}
        return {k: v.replace(job_id, "<id>") for k, v in kept.items() if k != "Nats-Time-Stamp"}

    assert stored(mine.headers, ours) == stored(other.headers, theirs)
    assert (mine.headers or {})["traceparent"] == header_value(messy).decode()

    # the same job again: the create-once check refuses it, with the same error
    with pytest.raises(nats.js.errors.BadRequestError) as refused:
        await acks.publish(
            NAMES.event_subject("ingest", ours, "requested"),
            payload,
            _block(_create_once(ours, TRACE)),
            timeout=5,
        )
    assert refused.value.err_code == 10071

    # the same Msg-Id without expectations: the duplicate ack of the first message
    again = await acks.publish(
        NAMES.event_subject("save", ours, "requested"),
        payload,
        header_block((b"Nats-Msg-Id", ours.encode())),
        timeout=5,
    )
    assert again.duplicate is True and again.seq == ack.seq


@pytest.mark.parametrize("fast", [True, False], ids=["buffer", "public"])
async def test_no_stream_and_no_answer(nc: Client, fast: bool) -> None:
    acks = AckPublisher(nc, fast=fast)
    block = header_block((b"Nats-Msg-Id", b"x"))
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await nc.jetstream().publish("no-stream.here", b"x", headers={"Nats-Msg-Id": "x"})
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await acks.publish("no-stream.here", b"x", block, timeout=5)

    # someone listens but never answers: a timeout, and nothing is left waiting
    silent = await nc.subscribe("silent.subject")
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await acks.publish("silent.subject", b"x", block, timeout=0.2)
    finally:
        await silent.unsubscribe()
    assert acks._waiting == {}


async def test_concurrent_publishes_get_their_own_acks(nc: Client) -> None:
    acks = AckPublisher(nc)
    ids = [new_job_id() for _ in range(50)]
    got = await asyncio.gather(
        *(
            acks.publish(
                NAMES.event_subject("save", i, "requested"),
                i.encode(),
                _block(_create_once(i, TRACE)),
                timeout=5,
            )
            for i in ids
        )
    )
    js = nc.jetstream()
    for job_id, ack in zip(ids, got, strict=True):
        msg = await js.get_msg(NAMES.stream, ack.seq, direct=True)
        assert msg.data == job_id.encode()
    assert acks._waiting == {}


def test_header_block_round_trip() -> None:
    headers = _create_once(new_job_id(), TRACE)
    block = _block(headers)
    assert block.startswith(b"NATS/1.0\r\n") and block.endswith(b"\r\n\r\n")
    assert parse_header_block(block) == headers
    assert header_value(" a\r\nb ") == b"a  b"
