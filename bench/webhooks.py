"""Webhook latency: time from a job's terminal event (acknowledged by JetStream, on disk) to the
receiver's 200, with 100 jobs in flight (closed loop: each of 100 lanes ends a job, waits for
its delivery, ends the next), through a real `audioprep notifier` process.

python -m bench.webhooks [--jobs 2000] [--in-flight 100] [--notifiers 1]
→ bench/results/webhooks.json

The receiver is a minimal keep-alive HTTP/1.1 server in this process that verifies every
delivery with the `standardwebhooks` library before answering 200. Job ends are
JobRequested + JobCompleted appended through the event store (what the API does for a
render-cache hit), so the number is the notifier's path alone: fan-out consumer → KV lookup →
DeliveryCreated → delivery consumer → job view → sign → POST → record the attempt.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

import standardwebhooks

from audioprep.domain.events import JobCompleted, JobRequested, JobResult, utcnow
from audioprep.shared import names
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import new_job_id
from audioprep.shared.names import Names
from audioprep.shared.nats_conn import connect
from audioprep.shared.webhook_crypto import new_secret, secret_box
from audioprep.shared.webhook_store import Endpoint, EndpointStore, StoredSecret, new_endpoint_id
from bench.common import bench_env, log, provision_env, row, summary_ms, write_result

NAMES = Names()  # the default prefix: what `audioprep up` uses

TENANT = "bench"
KEY = "bench-webhook-key-0123456789abcdef0123456789"


class Receiver:
    """Keep-alive HTTP/1.1; answers 200 once the signature verifies; notes when, per job."""

    def __init__(self, secret: str) -> None:
        self.webhook = standardwebhooks.Webhook(secret)
        self.arrived: dict[str, float] = {}
        self.waiters: dict[str, asyncio.Future[float]] = {}
        self.requests = 0
        self.bad = 0
        self.connections: set[asyncio.Task[Any]] = set()

    def expect(self, job_id: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiters[job_id] = future
        return future

    async def close(self) -> None:
        for task in self.connections:
            task.cancel()
        await asyncio.gather(*self.connections, return_exceptions=True)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.connections.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests += 1
                try:
                    doc = self.webhook.verify(body, headers)
                    status = b"200 OK"
                except Exception:
                    self.bad += 1
                    doc, status = None, b"400 Bad Request"
                writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                now = time.monotonic()
                if doc is not None:
                    job_id = doc["data"]["jobId"]
                    future = self.waiters.pop(job_id, None)
                    if future is not None and not future.done():
                        future.set_result(now)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            if task is not None:
                self.connections.discard(task)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with bench_env("webhooks") as env:
        settings = env.settings.with_(
            webhook_secret_key=KEY, url_allow_hosts=frozenset({"127.0.0.1"})
        )
        await provision_env(env)
        secret = new_secret()
        receiver = Receiver(secret)
        server = await asyncio.start_server(receiver.serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        nc = await connect(settings, "bench")
        js = nc.jetstream()
        events = EventStore(nc, js, NAMES)
        now = utcnow()
        endpoint_id = new_endpoint_id()
        key = names.webhook_endpoint_key(TENANT, endpoint_id)
        last = (await js.stream_info(NAMES.stream)).state.last_seq or 0
        await EndpointStore(nc, js, NAMES).create(
            Endpoint(
                id=endpoint_id,
                tenant=TENANT,
                url=f"http://127.0.0.1:{port}/hook",
                events=["job.completed"],
                created_at=now,
                updated_at=now,
                jobs_from_seq=int(last),
                secrets=[
                    StoredSecret(sealed=secret_box(settings).encrypt(secret, key), created_at=now)
                ],
            )
        )
        extra = {
            "AUDIOPREP_WEBHOOK_SECRET_KEY": KEY,
            "AUDIOPREP_URL_ALLOW_HOSTS": "127.0.0.1",
            "AUDIOPREP_LOG_LEVEL": "WARNING",
        }
        notifiers = [
            env.audioprep("notifier", log_name=f"notifier-{i}", **extra)
            for i in range(args.notifiers)
        ]
        await _wait_ready(events, receiver, args.notifiers)
        cpu_before = sum(_cpu_s(p.pid) for p in notifiers)

        latencies: list[float] = []
        remaining = args.jobs

        async def lane() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                job_id = new_job_id()
                arrived = receiver.expect(job_id)
                await events.request_job(
                    JobRequested(job_id=job_id, kind="save", tenant=TENANT, format="wav")
                )
                result = JobResult(prepared_key=f"prepared/{job_id}/a.wav", format="wav")
                await events.append_terminal(
                    JobCompleted(job_id=job_id, kind="save", tenant=TENANT, result=result)
                )
                ended = time.monotonic()
                latencies.append(await asyncio.wait_for(arrived, timeout=60) - ended)

        remaining = args.idle_jobs
        await lane()  # one at a time: the latency of a single job on an idle system
        idle = summary_ms(latencies)
        log(f"1 in flight: {idle}")
        latencies.clear()
        remaining = args.jobs
        log(f"{args.jobs} jobs, {args.in_flight} in flight, {args.notifiers} notifier(s)")
        started = time.monotonic()
        await asyncio.gather(*(lane() for _ in range(args.in_flight)))
        elapsed = time.monotonic() - started
        cpu_ms = (sum(_cpu_s(p.pid) for p in notifiers) - cpu_before) * 1000 / args.jobs
        await nc.close()
        env.stop_all()  # the notifier first: it holds connections to the receiver
        server.close()
        await receiver.close()
        stats = summary_ms(latencies)
        log(
            f"latency {stats}, {args.jobs / elapsed:.0f} deliveries/s, "
            f"notifier CPU {cpu_ms:.2f} ms/delivery, unverified={receiver.bad}"
        )
        return {
            "params": vars(args),
            "latency": stats,
            "latency_one_in_flight": idle,
            "deliveries_per_s": round(args.jobs / elapsed, 1),
            "notifier_cpu_ms_per_delivery": round(cpu_ms, 3),
            "requests": receiver.requests,
            "unverified": receiver.bad,
            "rows": [
                row(
                    "webhooks",
                    "terminal event → receiver 200, p99, 1 job in flight",
                    idle["p99_ms"],
                    None,
                    "ms",
                    higher_is_better=False,
                    target="< 1000 ms",
                    met=idle["p99_ms"] < 1000,
                ),
                row(
                    "webhooks",
                    "terminal event → receiver 200, p50",
                    stats["p50_ms"],
                    None,
                    "ms",
                    higher_is_better=False,
                ),
                row(
                    "webhooks",
                    "terminal event → receiver 200, p99",
                    stats["p99_ms"],
                    None,
                    "ms",
                    higher_is_better=False,
                    target="< 1000 ms",
                    met=stats["p99_ms"] < 1000,
                    notes=f"{args.in_flight} jobs in flight, {args.notifiers} notifier(s), "
                    f"{args.jobs / elapsed:.0f} deliveries/s",
                ),
            ],
        }


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _wait_ready(events: EventStore, receiver: Receiver, notifiers: int) -> None:
    """One delivery end to end before measuring (every notifier subscribed and warm)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job_id = new_job_id()
        arrived = receiver.expect(job_id)
        await events.request_job(JobRequested(job_id=job_id, kind="save", tenant=TENANT))
        await events.append_terminal(
            JobCompleted(job_id=job_id, kind="save", tenant=TENANT, result=JobResult())
        )
        try:
            await asyncio.wait_for(arrived, timeout=5)
            return
        except TimeoutError:
            continue
    raise TimeoutError("no notifier delivered within 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--idle-jobs", type=int, default=200, help="jobs sent one at a time")
    parser.add_argument("--notifiers", type=int, default=1)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    path = write_result("webhooks", result)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
