"""The natscli reads of docs/operators.md, reproduced with nats-py (natscli isn't installable here).

Each function does what the named `nats ...` command does on the wire (same stream, subjects,
filters and deliver policies) and `render_*` prints the result in natscli's layout. The test
`test_natscli_reads.py` checks the reads; `python -m tests.cli.natscli JOB_ID` prints the doc's
example output against AUDIOPREP_NATS_URL.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RawStreamMsg, StreamInfo
from nats.js.kv import KeyValue

from audioprep.shared.names import Names

NAMES = Names()  # the default prefix: what `audioprep up` uses

SNAPSHOT_CHUNK = 128 * 1024


def _ts(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- nats stream info JOBS ---------------------------------------------------------------------


async def stream_info(js: JetStreamContext) -> StreamInfo:
    return await js.stream_info(NAMES.stream)


def _enum(value: object) -> str:
    return str(getattr(value, "value", value) or "").title()


def render_stream_info(info: StreamInfo) -> str:
    c, s = info.config, info.state
    rows = [
        ("Subjects", ", ".join(c.subjects or [])),
        ("Replicas", c.num_replicas),
        ("Storage", _enum(c.storage)),
        ("Retention", _enum(c.retention)),
        ("Discard Policy", _enum(c.discard)),
        ("Duplicate Window", f"{int(c.duplicate_window or 0)}s"),
        ("Direct Get", str(bool(c.allow_direct)).lower()),
        ("Allows Msg Delete", str(not c.deny_delete).lower()),
        ("Allows Purge", str(not c.deny_purge).lower()),
        ("Maximum Age", f"{int((c.max_age or 0) / 86400)}d"),
        ("Maximum Message Size", f"{c.max_msg_size} B"),
    ]
    state = [
        ("Messages", s.messages),
        ("Bytes", f"{s.bytes} B"),
        ("First Sequence", s.first_seq),
        ("Last Sequence", s.last_seq),
        ("Active Consumers", s.consumer_count),
        ("Number of Subjects", s.subjects if isinstance(s.subjects, int) else "-"),
    ]
    out = ["Configuration:", ""]
    out += [f"  {k:>22}: {v}" for k, v in rows]
    out += ["", "State:", ""]
    out += [f"  {k:>22}: {v}" for k, v in state]
    return "\n".join(out)


# ---- reading messages: nats stream view / nats sub --stream ------------------------------------


async def read_range(
    js: JetStreamContext,
    subject: str,
    *,
    since: datetime | None = None,
    start_seq: int | None = None,
    limit: int | None = None,
) -> list[Msg]:
    """What `nats stream view` / `nats sub --stream --all|--since` deliver: every stored message
    matching `subject` from the start (or a time or sequence) up to the current end."""
    if since is not None:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=since)
    elif start_seq is not None:
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_seq
        )
    else:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    config.ack_policy = AckPolicy.NONE
    config.inactive_threshold = 30.0
    sub = await js.pull_subscribe(subject, stream=NAMES.stream, config=config)
    out: list[Msg] = []
    try:
        remaining = (await sub.consumer_info()).num_pending or 0
        if limit is not None:
            remaining = min(remaining, limit)
        while remaining > 0:
            batch = await sub.fetch(min(256, remaining), timeout=5)
            out.extend(batch)
            remaining -= len(batch)
    finally:
        await sub.unsubscribe()
    return out


async def follow_job(js: JetStreamContext, job_id: str, *, timeout: float = 30.0) -> list[Msg]:
    """`nats sub --stream JOBS 'jobs.*.<id>.>'`: a push consumer, deliver all, ack none, until
    the job's terminal event."""
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        await queue.put(msg)

    sub = await js.subscribe(
        NAMES.job_subjects(job_id),
        stream=NAMES.stream,
        ordered_consumer=True,
        cb=on_msg,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    out: list[Msg] = []
    try:
        while True:
            msg = await asyncio.wait_for(queue.get(), timeout=timeout)
            out.append(msg)
            if msg.subject.rsplit(".", 1)[-1] in ("completed", "failed", "cancelled"):
                return out
    finally:
        await sub.unsubscribe()


def _headers(headers: dict[str, str] | None, indent: str = "") -> list[str]:
    return [f"{indent}{k}: {v}" for k, v in (headers or {}).items()]


def render_sub(msgs: list[Msg]) -> str:
    """natscli's `nats sub` layout for JetStream messages."""
    out: list[str] = []
    for i, m in enumerate(msgs, 1):
        md = m.metadata
        out.append(
            f"[#{i}] Received JetStream message: stream: {md.stream} seq {md.sequence.stream} "
            f"/ subject: {m.subject} / time: {_ts(md.timestamp)}"
        )
        out += _headers(m.headers)
        out += ["", m.data.decode(), ""]
    return "\n".join(out).rstrip()


def render_view(msgs: list[Msg]) -> str:
    """natscli's `nats stream view` layout."""
    out: list[str] = []
    for m in msgs:
        md = m.metadata
        out.append(f"[{md.sequence.stream}] Subject: {m.subject} Received: {_ts(md.timestamp)}")
        if m.headers:
            out.append("")
            out += _headers(m.headers, "  ")
        out += ["", m.data.decode(), ""]
    return "\n".join(out).rstrip()


# ---- nats kv get jobs <id> ---------------------------------------------------------------------


async def kv_get(js: JetStreamContext, job_id: str) -> KeyValue.Entry:
    kv = await js.key_value(NAMES.jobs_bucket)
    return await kv.get(job_id)


def render_kv(entry: KeyValue.Entry) -> str:
    return (
        f"{entry.bucket} > {entry.key} revision: {entry.revision}\n\n"
        f"{(entry.value or b'').decode()}"
    )


# ---- nats stream get JOBS --last-for <subject> -------------------------------------------------


async def last_for(js: JetStreamContext, subject: str) -> RawStreamMsg:
    return await js.get_last_msg(NAMES.stream, subject)


def render_get(msg: RawStreamMsg) -> str:
    out = [f"Item: {NAMES.stream}#{msg.seq} on Subject {msg.subject}", ""]
    if msg.headers:
        out += ["Headers:", *_headers(msg.headers, "  "), ""]
    out.append((msg.data or b"").decode())
    return "\n".join(out)


# ---- nats stream backup / restore --------------------------------------------------------------


@dataclass
class Backup:
    directory: Path
    chunks: int
    size: int
    state: dict[str, Any]


async def backup(nc: Client, directory: Path, *, stream: str = NAMES.stream) -> Backup:
    """`nats stream backup JOBS DIR`: a server snapshot streamed in acknowledged chunks, written
    as natscli writes it (backup.json with config and state, stream.tar.s2 with the data)."""
    directory.mkdir(parents=True, exist_ok=True)
    inbox = nc.new_inbox()
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_chunk(msg: Msg) -> None:
        await queue.put(msg)

    sub = await nc.subscribe(inbox, cb=on_chunk)
    try:
        request = {"deliver_subject": inbox, "no_consumers": False, "chunk_size": SNAPSHOT_CHUNK}
        resp = await nc.request(
            f"$JS.API.STREAM.SNAPSHOT.{stream}", json.dumps(request).encode(), timeout=10
        )
        meta = json.loads(resp.data)
        if "error" in meta:
            raise RuntimeError(f"snapshot refused: {meta['error']}")
        chunks, size = 0, 0
        with (directory / "stream.tar.s2").open("wb") as f:
            while True:
                msg = await asyncio.wait_for(queue.get(), timeout=10)
                if not msg.data and not msg.reply:
                    break  # EOF
                f.write(msg.data)
                chunks += 1
                size += len(msg.data)
                if msg.reply:
                    await nc.publish(msg.reply, b"")  # flow-control ack
    finally:
        await sub.unsubscribe()
    doc = {"config": meta["config"], "state": meta["state"]}
    (directory / "backup.json").write_text(json.dumps(doc, indent=2))
    return Backup(directory=directory, chunks=chunks, size=size, state=meta["state"])


async def restore(nc: Client, directory: Path) -> dict[str, Any]:
    """`nats stream restore DIR`: create the stream from a backup (it must not exist)."""
    doc = json.loads((directory / "backup.json").read_text())
    name = doc["config"]["name"]
    resp = await nc.request(f"$JS.API.STREAM.RESTORE.{name}", json.dumps(doc).encode(), timeout=10)
    answer = json.loads(resp.data)
    if "error" in answer:
        raise RuntimeError(f"restore refused: {answer['error']}")
    target = answer["deliver_subject"]
    data = (directory / "stream.tar.s2").read_bytes()
    for start in range(0, len(data), SNAPSHOT_CHUNK):
        await nc.request(target, data[start : start + SNAPSHOT_CHUNK], timeout=10)
    done = await nc.request(target, b"", timeout=60)
    info: dict[str, Any] = json.loads(done.data)
    if "error" in info:
        raise RuntimeError(f"restore failed: {info['error']}")
    return info


# ---- the example output for docs/operators.md --------------------------------------------------


async def _print_examples(job_id: str, backup_dir: Path) -> None:
    from audioprep.shared.nats_conn import connect
    from audioprep.shared.settings import Settings

    nc = await connect(Settings.from_env(), "natscli-doc")
    js = nc.jetstream()

    async def show(title: str, text: str) -> None:
        print(f"$ {title}\n{text}\n")

    try:
        await show("nats stream info JOBS", render_stream_info(await stream_info(js)))
        await show("nats stream view JOBS", render_view(await read_range(js, "jobs.>", limit=3)))
        msgs = await follow_job(js, job_id)
        kind = msgs[0].subject.split(".")[1]
        await show(f"nats sub --stream JOBS 'jobs.*.{job_id}.>'", render_sub(msgs))
        await show(f"nats kv get jobs {job_id}", render_kv(await kv_get(js, job_id)))
        subject = NAMES.event_subject(kind, job_id, "completed")  # type: ignore[arg-type]
        await show(
            f"nats stream get JOBS --last-for {subject}", render_get(await last_for(js, subject))
        )
        since = msgs[0].metadata.timestamp - timedelta(seconds=1)
        ranged = await read_range(js, f"jobs.{kind}.>", since=since)
        await show(
            f"nats sub --stream JOBS --since <{_ts(since)} as a duration> 'jobs.{kind}.>'",
            render_sub(ranged[:2]) + f"\n... ({len(ranged)} messages)",
        )
        b = await backup(nc, backup_dir)
        files = ", ".join(f"{p.name} ({p.stat().st_size} B)" for p in sorted(backup_dir.iterdir()))
        await show(
            f"nats stream backup JOBS {backup_dir}",
            f"{b.chunks} chunk(s), {b.size} B; state {b.state['messages']} messages, "
            f"seq {b.state['first_seq']}..{b.state['last_seq']}\nfiles: {files}",
        )
    finally:
        await nc.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m tests.cli.natscli JOB_ID BACKUP_DIR  (AUDIOPREP_NATS_URL set)")
    os.environ.setdefault("AUDIOPREP_LOG_FORMAT", "console")
    asyncio.run(_print_examples(sys.argv[1], Path(sys.argv[2])))
