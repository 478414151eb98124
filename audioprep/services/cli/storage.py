"""`audioprep storage gc|evict-previews`: the output lifecycle of the storage backend.

gc removes what no job needs any more: everything a failed or cancelled job left behind,
uploads already copied into `sources/` by a completed ingest, uploads whose job was never
requested, and previews the render cache no longer points at. evict-previews drops previews
older than a given age together with their render-cache entries. Both are dry runs unless
`--yes` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import re
import signal
import sys
from collections import Counter
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from audioprep.domain.views import JobView
from audioprep.shared import render_cache
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import is_job_id
from audioprep.shared.job_views import JobViews
from audioprep.shared.keys import DEFAULT_TENANT
from audioprep.shared.names import Names
from audioprep.shared.storage import ObjectInfo, Storage

log = logging.getLogger("audioprep.storage")

JOB_AREAS = ("uploads", "sources", "peaks", "prepared")
PREVIEWS = "previews"
DELETE_BATCH = 200
GC_PAGE = 1000  # objects per page of a gc scan
LOOKUP_CONCURRENCY = 32
DEFAULT_GRACE = timedelta(hours=24)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

# Why an object goes (stable words: they appear in the output and the docs).
FAILED = "failed job"
CANCELLED = "cancelled job"
COPIED_UPLOAD = "upload copied to sources"
NO_JOB_UPLOAD = "upload without a job"
UNCACHED_PREVIEW = "preview not in render cache"
EVICTED = "preview older than limit"


def parse_duration(text: str) -> timedelta:
    """`90s`, `30m`, `12h`, `7d`, `2w` → timedelta."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 30m, 12h, 7d)")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class Stored:
    """A storage key split into the layout of shared/keys.py."""

    info: ObjectInfo
    tenant: str
    area: str
    owner: str  # job id, or render cache key for previews


def parse_key(info: ObjectInfo) -> Stored | None:
    """Which tenant, area and job/cache key an object belongs to; None for foreign keys."""
    parts = info.key.split("/")
    tenant = DEFAULT_TENANT
    if len(parts) > 2 and parts[0] == "tenants":
        tenant, parts = parts[1], parts[2:]
    if len(parts) == 3 and parts[0] in ("uploads", "sources", "prepared"):
        return Stored(info=info, tenant=tenant, area=parts[0], owner=parts[1])
    if len(parts) == 2 and parts[0] in ("peaks", PREVIEWS) and "." in parts[1]:
        return Stored(info=info, tenant=tenant, area=parts[0], owner=parts[1].split(".", 1)[0])
    return None


@dataclass(frozen=True, slots=True)
class Doomed:
    info: ObjectInfo
    reason: str


@dataclass
class Plan:
    """What a run would delete, and what it looked at."""

    doomed: list[Doomed]
    scanned: int
    scanned_bytes: int
    jobs_checked: int = 0
    kept: Counter[str] | None = None
    freed: int = 0  # bytes actually deleted (objects rewritten since the scan are kept)

    @property
    def bytes(self) -> int:
        return sum(d.info.size for d in self.doomed)


def _job_owned(obj: Stored) -> bool:
    return obj.area in JOB_AREAS or (obj.area == PREVIEWS and is_job_id(obj.owner))


def plan_gc(
    objects: Iterable[Stored],
    jobs: Mapping[str, JobView | None],
    cached: Mapping[str, str | None],
    *,
    now: datetime,
    grace: timedelta,
    present: Container[str] | None = None,
) -> tuple[list[Doomed], Counter[str]]:
    """Pure decision: which objects no job needs. Unknown history is kept, never guessed.

    `present`: the keys known to exist (a completed ingest's upload goes only once its source
    is among them); by default the keys of `objects`."""
    objects = list(objects)
    if present is None:
        present = {o.info.key for o in objects}
    doomed: list[Doomed] = []
    kept: Counter[str] = Counter()
    for obj in objects:
        old_enough = obj.info.modified is None or now - obj.info.modified >= grace
        if not _job_owned(obj):  # a render-cache preview
            if cached.get(obj.owner) != obj.info.key and old_enough:
                doomed.append(Doomed(obj.info, UNCACHED_PREVIEW))
            else:
                kept["cached preview"] += 1
            continue
        view = jobs.get(obj.owner)
        if view is None or view.tenant != obj.tenant:
            if obj.area == "uploads" and view is None and old_enough:
                doomed.append(Doomed(obj.info, NO_JOB_UPLOAD))
            else:
                kept["no job history (kept)"] += 1
        elif view.status == "failed":
            doomed.append(Doomed(obj.info, FAILED))
        elif view.status == "cancelled":
            doomed.append(Doomed(obj.info, CANCELLED))
        elif (
            view.status == "completed"
            and obj.area == "uploads"
            and view.result is not None
            and view.result.source_key in present
        ):
            doomed.append(Doomed(obj.info, COPIED_UPLOAD))
        else:
            kept[f"{view.status} job"] += 1
    return doomed, kept


async def cache_entries(kv: KeyValue, cache_keys: Iterable[str]) -> dict[str, str | None]:
    gate = asyncio.Semaphore(LOOKUP_CONCURRENCY)

    async def one(key: str) -> tuple[str, str | None]:
        async with gate:
            return key, await render_cache.lookup(kv, key)

    return dict(await asyncio.gather(*(one(k) for k in cache_keys)))


async def plan_storage_gc(
    storage: Storage,
    js: JetStreamContext,
    events: EventStore,
    *,
    grace: timedelta = DEFAULT_GRACE,
    now: datetime | None = None,
    out: TextIO = sys.stdout,
) -> Plan:
    """Scan storage a page at a time, look up the jobs and cache keys each page names, decide
    what goes. Memory holds one page and what is doomed, however many objects there are."""
    print(f"scanning {storage.describe()} …", file=out, flush=True)
    jobs_kv = await js.key_value(events.names.jobs_bucket)
    views = JobViews(jobs_kv, events)
    cache = await render_cache.bucket(js, events.names)
    now = now or datetime.now(UTC)
    plan = Plan(doomed=[], scanned=0, scanned_bytes=0, kept=Counter())
    cache_checked = 0
    async for page in storage.pages("", GC_PAGE):
        plan.scanned += len(page)
        plan.scanned_bytes += sum(i.size for i in page)
        objects = [p for p in map(parse_key, page) if p is not None]
        job_ids = {o.owner for o in objects if _job_owned(o) and is_job_id(o.owner)}
        cache_keys = {o.owner for o in objects if not _job_owned(o)}
        jobs = await views.many(sorted(job_ids))
        cached = await cache_entries(cache, sorted(cache_keys))
        present = {o.info.key for o in objects} | await _sources_elsewhere(storage, objects, jobs)
        doomed, kept = plan_gc(objects, jobs, cached, now=now, grace=grace, present=present)
        plan.doomed.extend(doomed)
        assert plan.kept is not None
        plan.kept.update(kept)
        plan.jobs_checked += len(job_ids)
        cache_checked += len(cache_keys)
    print(f"  {plan.scanned} objects, {human_bytes(plan.scanned_bytes)}", file=out, flush=True)
    print(
        f"  {plan.jobs_checked} jobs and {cache_checked} render-cache keys checked",
        file=out,
        flush=True,
    )
    return plan


async def _sources_elsewhere(
    storage: Storage, objects: list[Stored], jobs: Mapping[str, JobView | None]
) -> set[str]:
    """Sources of completed ingests whose upload is in this page but whose source is not
    (another prefix, so usually another page): the ones that exist."""
    keys = {o.info.key for o in objects}
    wanted = set()
    for obj in objects:
        view = jobs.get(obj.owner)
        if obj.area == "uploads" and view is not None and view.result is not None:
            source = view.result.source_key
            if view.status == "completed" and source and source not in keys:
                wanted.add(source)
    gate = asyncio.Semaphore(LOOKUP_CONCURRENCY)

    async def exists(key: str) -> bool:
        async with gate:
            return await storage.head(key) is not None

    ordered = sorted(wanted)
    found = await asyncio.gather(*(exists(k) for k in ordered))
    return {k for k, there in zip(ordered, found, strict=True) if there}


async def plan_eviction(
    storage: Storage,
    *,
    older_than: timedelta,
    now: datetime | None = None,
    out: TextIO = sys.stdout,
) -> Plan:
    """Every preview (all tenants) last written before now - older_than (scanned by pages)."""
    print(f"scanning {storage.describe()} …", file=out, flush=True)
    cutoff = (now or datetime.now(UTC)) - older_than
    plan = Plan(doomed=[], scanned=0, scanned_bytes=0)
    async for page in storage.pages("", GC_PAGE):
        plan.scanned += len(page)
        plan.scanned_bytes += sum(i.size for i in page)
        for o in filter(None, map(parse_key, page)):
            if o.area == PREVIEWS and o.info.modified is not None and o.info.modified < cutoff:
                plan.doomed.append(Doomed(o.info, EVICTED))
    print(f"  {plan.scanned} objects, {human_bytes(plan.scanned_bytes)}", file=out, flush=True)
    return plan


def print_plan(plan: Plan, out: TextIO, *, verbose: bool, apply: bool) -> None:
    verb = "deleting" if apply else "would delete"
    print(f"{verb} {len(plan.doomed)} objects, {human_bytes(plan.bytes)}", file=out)
    by_reason: dict[str, list[Doomed]] = {}
    for d in plan.doomed:
        by_reason.setdefault(d.reason, []).append(d)
    for reason, items in sorted(by_reason.items()):
        size = human_bytes(sum(d.info.size for d in items))
        print(f"  {reason:<28} {len(items):>7} objects  {size:>10}", file=out)
        if verbose:
            for d in items:
                print(f"    {d.info.key}", file=out)
    for what, count in sorted((plan.kept or Counter()).items()):
        print(f"  kept: {what:<22} {count:>7} objects", file=out)
    out.flush()


async def apply_plan(
    storage: Storage,
    plan: Plan,
    *,
    cache: KeyValue | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Delete what the plan names in batches, printing progress; returns bytes freed."""
    done = 0
    freed = 0
    total = len(plan.doomed)
    for i in range(0, total, DELETE_BATCH):
        batch = [
            d for d in plan.doomed[i : i + DELETE_BATCH] if await _still_doomed(storage, d, cache)
        ]
        await storage.delete_many([d.info.key for d in batch])
        done += len(plan.doomed[i : i + DELETE_BATCH])
        freed += sum(d.info.size for d in batch)
        print(f"  {done}/{total} processed, {human_bytes(freed)} freed", file=out, flush=True)
    return freed


async def _still_doomed(storage: Storage, d: Doomed, kv: KeyValue | None) -> bool:
    """Re-check one object just before deleting it.

    An evicted preview first loses its render-cache entry, so the cache never answers with a
    deleted object; an uncached preview that got cached since the scan is kept; anything
    rewritten since the scan (new modification time) is kept.
    """
    stored = parse_key(d.info)
    cache_owned = stored is not None and stored.area == PREVIEWS and not is_job_id(stored.owner)
    if kv is not None and stored is not None and cache_owned:
        points_here = await render_cache.lookup(kv, stored.owner) == d.info.key
        if d.reason == UNCACHED_PREVIEW and points_here:
            return False
        if d.reason == EVICTED and points_here:
            await render_cache.forget(kv, stored.owner)
    current = await storage.head(d.info.key)
    return current is not None and current.modified == d.info.modified


async def run_gc(
    storage: Storage,
    js: JetStreamContext,
    events: EventStore,
    *,
    apply: bool,
    grace: timedelta = DEFAULT_GRACE,
    verbose: bool = False,
    now: datetime | None = None,
    out: TextIO = sys.stdout,
) -> Plan:
    plan = await plan_storage_gc(storage, js, events, grace=grace, now=now, out=out)
    cache = await render_cache.bucket(js, events.names)
    return await _show_and_apply(plan, storage, cache, apply=apply, verbose=verbose, out=out)


async def run_eviction(
    storage: Storage,
    js: JetStreamContext,
    names: Names,
    *,
    older_than: timedelta,
    apply: bool,
    verbose: bool = False,
    now: datetime | None = None,
    out: TextIO = sys.stdout,
) -> Plan:
    plan = await plan_eviction(storage, older_than=older_than, now=now, out=out)
    cache = await render_cache.bucket(js, names)
    return await _show_and_apply(plan, storage, cache, apply=apply, verbose=verbose, out=out)


async def _show_and_apply(
    plan: Plan,
    storage: Storage,
    cache: KeyValue,
    *,
    apply: bool,
    verbose: bool,
    out: TextIO,
) -> Plan:
    """Print the plan, then delete (--yes) or say it was a dry run."""
    print_plan(plan, out, verbose=verbose, apply=apply)
    if apply and plan.doomed:
        plan.freed = await apply_plan(storage, plan, cache=cache, out=out)
    elif not apply and plan.doomed:
        print("dry run: nothing deleted; run again with --yes to delete", file=out)
    return plan


async def check_storage(storage: Storage, out: TextIO = sys.stdout) -> bool:
    """Round-trip a probe object and a presigned GET: proves endpoint, keys and bucket."""
    import httpx

    key = f"__audioprep_check__/{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
    probe = b"audioprep storage check\n" * 40
    print(f"storage  {storage.describe()}", file=out, flush=True)
    try:
        await storage.ping()
        print("  reach   ok", file=out, flush=True)
        await storage.put_bytes(key, probe)
        print(f"  write   ok ({len(probe)} bytes)", file=out, flush=True)
        ok = await storage.read_bytes(key) == probe
        print(f"  read    {'ok' if ok else 'MISMATCH'}", file=out, flush=True)
        url = await storage.sign_get(key, timedelta(minutes=5))
        if url is None:
            print("  sign    local storage: the API signs download links itself", file=out)
        else:
            async with httpx.AsyncClient(timeout=10) as client:
                resp = await client.get(url)
            signed_ok = resp.status_code == 200 and resp.content == probe
            ok = ok and signed_ok
            status = "ok" if signed_ok else f"FAILED (HTTP {resp.status_code})"
            print(f"  sign    presigned GET {status}", file=out, flush=True)
        await storage.delete(key)
        print("  delete  ok", file=out, flush=True)
    except Exception as exc:
        print(f"  FAILED  {exc}", file=out, flush=True)
        return False
    return ok


# -- command line ------------------------------------------------------------------------


async def gc_every(
    storage: Storage,
    js: JetStreamContext,
    events: EventStore,
    *,
    interval_s: float,
    stop: asyncio.Event,
    grace: timedelta = DEFAULT_GRACE,
) -> None:
    """`storage gc --yes` now and then every `interval_s` until `stop` (what `up` runs).

    Each pass logs one line when it deleted something; its human-readable report is dropped.
    A pass in progress when `stop` is set is abandoned (deletes are idempotent; the next pass
    finds whatever is left)."""
    while not stop.is_set():
        gc_pass = asyncio.create_task(
            run_gc(storage, js, events, apply=True, grace=grace, out=io.StringIO())
        )
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({gc_pass, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not gc_pass.done():
            gc_pass.cancel()
            await asyncio.gather(gc_pass, return_exceptions=True)
            return
        if gc_pass.exception() is not None:
            log.warning("storage gc failed", extra={"error": repr(gc_pass.exception())})
        elif (plan := gc_pass.result()).doomed:
            reasons = Counter(d.reason for d in plan.doomed)
            log.info(
                "storage gc",
                extra={
                    "objects": len(plan.doomed),
                    "bytes": plan.freed,
                    "reasons": dict(sorted(reasons.items())),
                },
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def _with_deps(args: argparse.Namespace) -> int:
    from audioprep.shared.logs import setup_logging
    from audioprep.shared.nats_conn import connect
    from audioprep.shared.settings import Settings
    from audioprep.shared.storage import open_storage

    settings = Settings.from_env()
    if getattr(args, "nats_url", None):
        settings = settings.with_(nats_url=args.nats_url)
    every: timedelta | None = getattr(args, "every", None)
    if every is not None:  # a long-running service: its log lines are its output
        setup_logging(settings.log_format, settings.log_level)
    else:  # a command: the report on stdout is the output; only warnings are logged
        setup_logging("console", "WARNING")
    storage = open_storage(settings.storage)
    if args.storage_command == "check":
        return 0 if await check_storage(storage) else 1
    nc = await connect(settings, "storage-cli" if every is None else "storage-gc")
    try:
        js = nc.jetstream()
        if every is not None:
            stop = asyncio.Event()
            _stop_on_signals(stop)
            log.info("storage gc runs periodically", extra={"every_s": every.total_seconds()})
            await gc_every(
                storage,
                js,
                EventStore(nc, js, settings.names),
                interval_s=every.total_seconds(),
                stop=stop,
                grace=args.grace,
            )
        elif args.storage_command == "gc":
            await run_gc(
                storage,
                js,
                EventStore(nc, js, settings.names),
                apply=args.yes,
                grace=args.grace,
                verbose=args.verbose,
            )
        else:
            await run_eviction(
                storage,
                js,
                settings.names,
                older_than=args.older_than,
                apply=args.yes,
                verbose=args.verbose,
            )
    finally:
        await nc.close()
    return 0


def _run(args: argparse.Namespace) -> int:
    if getattr(args, "every", None) is not None and not args.yes:
        from audioprep.services.cli.common import CliError

        raise CliError("--every runs gc unattended: it needs --yes", exit_code=2)
    return asyncio.run(_with_deps(args))


def register(commands: Any) -> None:
    p = commands.add_parser(
        "storage",
        help="storage: check the backend, gc orphaned outputs, evict old previews",
        description="Clean up the storage backend (AUDIOPREP_STORAGE_URL). Dry run unless --yes.",
    )
    sub = p.add_subparsers(dest="storage_command", required=True, metavar="SUBCOMMAND")
    gc = sub.add_parser(
        "gc",
        help="delete leftovers of failed/cancelled jobs, copied uploads, orphans",
        description="Delete what no job needs: all objects of failed or cancelled jobs, "
        "uploads already copied into sources/ by a completed ingest, uploads whose job was "
        "never requested and previews the render cache does not point at (the last two only "
        "when older than --grace). Objects of jobs with no history are kept.",
    )
    gc.add_argument(
        "--every",
        type=parse_duration,
        metavar="DURATION",
        help="keep running: a pass now and then one every DURATION (e.g. 1h) until SIGTERM or "
        "Ctrl-C, logging one line per pass that deleted something (`audioprep up` runs this "
        "every AUDIOPREP_GC_INTERVAL_S seconds)",
    )
    gc.add_argument(
        "--grace",
        type=parse_duration,
        default=DEFAULT_GRACE,
        help="minimum age of job-less uploads and uncached previews (default 24h)",
    )
    evict = sub.add_parser(
        "evict-previews",
        help="delete previews older than a given age and their render-cache entries",
        description="Delete previews last written more than --older-than ago, and drop their "
        "render-cache entries so the next identical preview renders again.",
    )
    evict.add_argument(
        "--older-than",
        type=parse_duration,
        required=True,
        help="age such as 12h, 7d, 2w",
    )
    for cmd in (gc, evict):
        cmd.add_argument("--yes", action="store_true", help="really delete (default: dry run)")
        cmd.add_argument("-v", "--verbose", action="store_true", help="list every key")
        cmd.add_argument("--nats-url", help="NATS server URL (default: AUDIOPREP_NATS_URL)")
        cmd.set_defaults(func=_run)
    check = sub.add_parser(
        "check",
        help="write, read, presign and delete a probe object (no NATS needed)",
        description="Check AUDIOPREP_STORAGE_URL and the AWS_* settings: reach the bucket, "
        "write, read, fetch a presigned GET over HTTP, delete. Exit 1 on any failure.",
    )
    check.set_defaults(func=_run)
