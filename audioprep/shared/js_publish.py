"""A JetStream publish for the API's hot path: the same message and the same answers as
`js.publish(subject, payload, headers=...)`, at about half its client-side CPU.

What `js.publish` spends per message and this doesn't (bench/RESULTS.md, "pre-encoded
headers"): a NUID plus `secrets.token_hex` (a getrandom syscall) for the reply token, a
done-callback and `asyncio.wait_for` around the reply future, a regex check, strip and encode
of every header name and value, `json.loads` of the ack and a dataclass built from it. Here:

- one reply subscription `<inbox>.<n>` for every ack of the connection, `n` a counter;
- the header block arrives pre-encoded (`header_block`): constant names, values trimmed and
  cleaned of CR/LF as nats-py does (`header_value`) or known to be single tokens;
- the ack is decoded by msgspec; an `error` in it raises exactly what `js.publish` raises
  (`nats.js.errors.APIError.from_error`: BadRequestError with err_code 10071, ...), no
  responders raises `NoStreamResponseError`, no answer in `timeout` `nats.errors.TimeoutError`.

The message goes out through nats-py's own outgoing buffer (`_send_command`, then the flusher
as `publish` does it), so ordering, reconnect buffering and flushing are nats-py's. Those two
are private names of nats-py 2.x: `fast_path_supported` checks them once, and without them
every publish goes through the public `nc.publish(headers=...)` instead
(tests/integration/test_js_publish.py runs both ways against a real server).
"""

from __future__ import annotations

import asyncio
import itertools

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.protocol.command import hpub_cmd

# JetStream's answer to a publish whose expected last subject sequence no longer holds
WRONG_LAST_SEQUENCE = 10071
_NO_RESPONDERS = "503"
_HEADER_LINE = b"NATS/1.0\r\n"


class Ack(msgspec.Struct):
    """A JetStream publish ack (`seq`, `duplicate`) or its error."""

    stream: str = ""
    seq: int = 0
    duplicate: bool | None = None
    error: dict[str, object] | None = None


_decode_ack = msgspec.json.Decoder(Ack).decode


_NEWLINES_TO_SPACES = str.maketrans({"\r": " ", "\n": " "})


def header_value(text: str) -> bytes:
    """A header value as nats-py writes it: trimmed, CR/LF turned into spaces, UTF-8."""
    return text.strip().translate(_NEWLINES_TO_SPACES).encode()


def header_block(*pairs: tuple[bytes, bytes]) -> bytes:
    """`NATS/1.0` + `name: value` lines + the blank line. Names are the caller's constants;
    values come from `header_value` or are known to be single tokens (job ids, subjects)."""
    return _HEADER_LINE + b"".join(k + b": " + v + b"\r\n" for k, v in pairs) + b"\r\n"


def parse_header_block(block: bytes) -> dict[str, str]:
    """The pairs of a header block (the public-API fallback hands nats-py a dict)."""
    lines = block.decode().split("\r\n")[1:]
    return dict(line.split(": ", 1) for line in lines if line)


def fast_path_supported(nc: Client) -> bool:
    """nats-py still has the outgoing-buffer internals this module writes through."""
    methods = ("_send_command", "_flush_pending")
    fields = ("_flush_queue", "_pending_data_size", "_max_pending_size")
    return all(callable(getattr(nc, m, None)) for m in methods) and all(
        hasattr(nc, f) for f in fields
    )


class AckPublisher:
    """Publishes with pre-encoded headers and waits for the JetStream ack."""

    def __init__(self, nc: Client, *, fast: bool | None = None) -> None:
        self.nc = nc
        self.fast = fast_path_supported(nc) if fast is None else fast
        self._prefix = ""
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._ids = itertools.count()
        self._started: asyncio.Task[None] | None = None
        # The connection's loop, looked up once: `asyncio.get_running_loop()` costs a getpid
        # syscall each time (CPython 3.11 checks the pid for forks).
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _start(self) -> None:
        prefix = self.nc.new_inbox() + "."
        await self.nc.subscribe(prefix + "*", cb=self._on_ack)
        self._loop = asyncio.get_running_loop()
        self._prefix = prefix

    async def _on_ack(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject, None)
        if future is not None and not future.done():
            future.set_result(msg)

    async def publish(
        self, subject: str, payload: bytes, header_block: bytes, *, timeout: float
    ) -> Ack:
        """Publish and return the ack; raises like `js.publish` (see the module's doc)."""
        if not self._prefix:
            if self._started is None:
                self._started = asyncio.ensure_future(self._start())
            await asyncio.shield(self._started)
        reply = self._prefix + str(next(self._ids))
        loop = self._loop
        assert loop is not None
        future: asyncio.Future[Msg] = loop.create_future()
        self._waiting[reply] = future
        timer = loop.call_later(timeout, _expire, future)
        try:
            await self._send(subject, reply, payload, header_block)
            msg = await future
        finally:
            timer.cancel()
            self._waiting.pop(reply, None)
        if not msg.data and msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
            raise nats.js.errors.NoStreamResponseError
        ack = _decode_ack(msg.data)
        if ack.error is not None:
            nats.js.errors.APIError.from_error(ack.error)  # raises
        return ack

    async def _send(self, subject: str, reply: str, payload: bytes, block: bytes) -> None:
        nc = self.nc
        if not self.fast:
            await nc.publish(subject, payload, reply=reply, headers=parse_header_block(block))
            return
        # The checks `nc.publish` makes before it queues a message, in its order.
        if nc.is_closed:
            raise nats.errors.ConnectionClosedError
        if nc.is_draining_pubs:
            raise nats.errors.ConnectionDrainingError
        size = len(payload)
        if not nc.is_connected and (
            nc._max_pending_size <= 0 or size + nc._pending_data_size > nc._max_pending_size
        ):
            raise nats.errors.OutboundBufferLimitError
        if size > nc.max_payload:
            raise nats.errors.MaxPayloadError
        nc.stats["out_msgs"] += 1
        nc.stats["out_bytes"] += size
        await nc._send_command(hpub_cmd(subject, reply, block, payload))
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()


def _expire(future: asyncio.Future[Msg]) -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())


async def publish_after(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    *,
    filter_subject: str,
    last_seq: int,
    timeout: float,
    headers: dict[str, str] | None = None,
) -> PubAck | None:
    """Publish only if the messages on `filter_subject` still end at `last_seq` (optimistic
    concurrency: a job's or a delivery's next event); None when another one landed first.
    `headers` adds to the two expected-sequence headers (Msg-Id, traceparent)."""
    expect = {
        "Nats-Expected-Last-Subject-Sequence": str(last_seq),
        "Nats-Expected-Last-Subject-Sequence-Subject": filter_subject,
    }
    try:
        return await js.publish(
            subject, payload, timeout=timeout, headers={**expect, **(headers or {})}
        )
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != WRONG_LAST_SEQUENCE:
            raise
        return None
