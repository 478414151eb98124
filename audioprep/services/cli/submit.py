"""`audioprep submit FILE|URL`: a client of the HTTP API, with live progress from SSE."""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import msgspec

from audioprep.domain.errors import INVALID_RECIPE
from audioprep.domain.events import JobCancelled, JobCompleted, JobFailed, JobResult
from audioprep.domain.recipe import SAVE_FORMATS, RecipeError, decode_recipe
from audioprep.domain.views import JobView
from audioprep.services.cli.common import CliError
from audioprep.services.cli.report import report_lines
from audioprep.shared import keys, logs
from audioprep.shared.settings import Settings

# SSE events are named by their event type (`JobCompleted`, …)
TERMINAL_TYPES = frozenset(cls.__name__ for cls in (JobCompleted, JobFailed, JobCancelled))
_view_decoder = msgspec.json.Decoder(JobView)
POLL_INTERVAL_S = 0.25
VIEW_SETTLE_S = 30.0
_YOUTUBE_HOSTS = ("youtube.com", "youtu.be")


class Api:
    """The few API calls the CLI makes; every failure becomes a one-line CliError."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.traceparent = logs.new_traceparent()
        headers = {"traceparent": self.traceparent, "User-Agent": "audioprep-cli"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.client = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout)
        )
        # The SSE route sends a comment every 15 s while idle: a minute of silence is a stall.
        self.stream_timeout = httpx.Timeout(timeout, read=max(timeout, 60.0))

    def close(self) -> None:
        self.client.close()

    def unreachable(self, exc: httpx.TransportError) -> CliError:
        return CliError(
            f"cannot reach the audioprep API at {self.base_url} ({type(exc).__name__}): start "
            "it with `audioprep up`, or pass --api URL / set AUDIOPREP_API_URL",
            exit_code=2,
        )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self.client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None
        if resp.status_code >= 400:
            raise problem_error(resp)
        return resp

    def view(self, job_id: str) -> JobView:
        """The job's view, decoded into the same JobView the API encodes."""
        resp = self.request("GET", f"/api/audio/jobs/{job_id}")
        try:
            return _view_decoder.decode(resp.content)
        except msgspec.DecodeError as exc:
            raise CliError(f"the API answered an unreadable job view: {exc}") from None


def problem_error(resp: httpx.Response) -> CliError:
    """`422 validation_error: ... (field recipe.gainDb)` from a problem+json answer."""
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    code = body.get("code") or f"http_{resp.status_code}"
    detail = body.get("detail") or resp.reason_phrase
    field = f" (field {body['field']})" if body.get("field") else ""
    return CliError(f"{resp.status_code} {code}: {detail}{field}")


# ---- progress display --------------------------------------------------------------------------


class Progress:
    """A rich progress bar on a terminal; plain `NN% stage` lines when stderr is not a tty."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.last: tuple[int, str] | None = None
        self.bar: Any = None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                SpinnerColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[stage]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )
            self.bar.start()
            self.task = self.bar.add_task(label, total=100, stage="pending")

    def update(self, progress: int, stage: str) -> None:
        if self.last == (progress, stage):
            return
        self.last = (progress, stage)
        if self.bar is not None:
            self.bar.update(self.task, completed=progress, stage=stage)
        else:
            print(f"  {self.label}: {progress:>3}% {stage}".rstrip(), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def bar_value(bar: Progress) -> int:
    return bar.last[0] if bar.last else 0


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---- following a job ---------------------------------------------------------------------------


def sse_events(resp: httpx.Response) -> Iterator[tuple[str, str, str]]:
    """(id, event, data) for each Server-Sent Event of a streaming response."""
    ident, name = "", "message"
    data: list[str] = []
    for line in resp.iter_lines():
        if not line:
            if data:
                yield ident, name, "\n".join(data)
            name, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "id":
            ident = value
        elif field == "event":
            name = value
        elif field == "data":
            data.append(value)


def follow_sse(api: Api, job_id: str, bar: Progress) -> bool:
    """Drive the bar from the job's SSE stream; False when SSE is not available."""
    headers = {"Accept": "text/event-stream"}
    try:
        path = f"/api/audio/jobs/{job_id}/events"
        with api.client.stream("GET", path, headers=headers, timeout=api.stream_timeout) as resp:
            if resp.status_code in (404, 405, 501) and "job_not_found" not in resp.read().decode(
                "utf-8", "replace"
            ):
                return False  # an API without the SSE route
            if resp.status_code >= 400:
                resp.read()
                raise problem_error(resp)
            for _, name, data in sse_events(resp):
                try:
                    event = json.loads(data)
                except ValueError:
                    continue
                if "progress" in event:
                    bar.update(int(event["progress"]), str(event.get("stage", "")))
                elif name == "JobStarted":
                    bar.update(bar_value(bar), "started")
                if name in TERMINAL_TYPES:
                    bar.update(100 if name == "JobCompleted" else bar_value(bar), name[3:].lower())
                    return True
    except httpx.TransportError as exc:
        if isinstance(exc, httpx.ConnectError):
            raise api.unreachable(exc) from None
        note(f"(event stream interrupted: {type(exc).__name__}; polling the job instead)")
        return False
    return False  # stream ended early: poll for the rest


def wait_view(api: Api, job_id: str, bar: Progress | None, timeout: float) -> JobView:
    """Poll the view until it is terminal (also covers a projector that is a moment behind)."""
    deadline = time.monotonic() + timeout
    while True:
        view = api.view(job_id)
        if bar is not None:
            bar.update(view.progress, view.stage)
        if view.is_terminal:
            return view
        if time.monotonic() > deadline:
            raise CliError(f"job {job_id} not finished after {timeout:.0f}s: {view.status}")
        time.sleep(POLL_INTERVAL_S)


def follow(api: Api, job_id: str, label: str, timeout: float) -> JobView:
    bar = Progress(f"{label} {job_id}")
    try:
        if follow_sse(api, job_id, bar):
            return wait_view(api, job_id, None, VIEW_SETTLE_S)
        note("(live events unavailable; polling the job view)")
        return wait_view(api, job_id, bar, timeout)
    finally:
        bar.close()


# ---- printing results --------------------------------------------------------------------------


def describe(view: JobView) -> list[str]:
    lines = [f"{view.status}: {view.kind} job {view.job_id} (attempt {view.attempt})"]
    if view.error:
        lines.append(f"  error       {view.error.code}: {view.error.message}")
    r = view.result or JobResult()
    loud = r.loudness
    media = (
        r.container,
        r.codec,
        f"{r.sample_rate} Hz" if r.sample_rate is not None else None,
        f"{r.channels} ch" if r.channels is not None else None,
    )
    facts = [
        ("sourceKey", r.source_key),
        ("title", r.title),
        ("duration", f"{r.duration_ms / 1000:.3f} s" if r.duration_ms is not None else None),
        ("format", " ".join(x for x in media if x) or None),
        (
            "loudness",
            f"{loud.integrated_lufs:.1f} LUFS, true peak {loud.true_peak_db or 0:.1f} dBTP"
            if loud is not None and loud.integrated_lufs is not None
            else None,
        ),
        ("previewKey", r.preview_key),
        ("preparedKey", r.prepared_key),
        ("size", f"{r.size_bytes} bytes" if r.size_bytes is not None else None),
        ("fromCache", "yes" if r.from_cache else None),
        ("downloadUrl", view.download_url),
    ]
    lines.extend(f"  {k:<11} {v}" for k, v in facts if v)
    lines.extend(f"  {k:<11} {v}" for k, v in report_lines(msgspec.to_builtins(r)))
    return lines


def is_directory_target(out: str) -> bool:
    """`-o out/` (a trailing slash) or an existing directory: write the file into it."""
    return out.endswith(("/", os.sep)) or Path(out).is_dir()


def output_name(view: JobView) -> str:
    """The file name of a job's output, from the server's names: a save's prepared file
    (`interview.mp3`: its filename and format); a preview is named after its source with the
    preview's format (`interview.preview.opus`)."""
    r = view.result or JobResult()
    if r.prepared_key:
        return r.prepared_key.rsplit("/", 1)[-1]
    preview = r.preview_key or ""
    ext = preview.rsplit("/", 1)[-1].rpartition(".")[2] if "." in preview else ""
    source = (r.source_key or "").rsplit("/", 1)[-1]
    base = keys.stem(source) if source else view.job_id
    return f"{base}.preview.{ext}" if ext else f"{base}.preview"


def output_path(view: JobView, out: str) -> Path:
    """Where `-o OUT` puts the job's output (directories are created)."""
    if is_directory_target(out):
        directory = Path(out)
        directory.mkdir(parents=True, exist_ok=True)
        return directory / output_name(view)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def download(api: Api, view: JobView, out: str) -> Path:
    url = view.download_url
    if not url:
        raise CliError(f"job {view.job_id} has no downloadUrl (only previews and saves do)")
    url = urljoin(api.base_url + "/", url)
    try:
        target = output_path(view, out)
    except OSError as exc:
        raise CliError(f"-o {out}: {exc.strerror or exc}") from None
    same_origin = urlsplit(url)[:2] == urlsplit(api.base_url)[:2]
    client = api.client if same_origin else httpx.Client(timeout=api.client.timeout)
    try:
        with client.stream("GET", url) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise problem_error(resp)
            tmp = target.with_name(target.name + ".part")
            with tmp.open("wb") as f:
                for chunk in resp.iter_bytes(1 << 16):
                    f.write(chunk)
            tmp.replace(target)
    except httpx.TransportError as exc:
        raise api.unreachable(exc) from None
    finally:
        if not same_origin:
            client.close()
    return target


# ---- the command -------------------------------------------------------------------------------


def _ingest(api: Api, source: str) -> str:
    if source.startswith(("http://", "https://")):
        host = (urlsplit(source).hostname or "").lower()
        kind = "youtube" if host.endswith(_YOUTUBE_HOSTS) else "url"
        resp = api.request("POST", "/api/audio/ingest", json={"source": kind, "url": source})
    else:
        path = Path(source)
        if not path.is_file():
            raise CliError(f"{source}: no such file (give a file path or an http(s) URL)")
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        with path.open("rb") as f:
            resp = api.request("POST", "/api/audio/ingest", files={"file": (path.name, f, ctype)})
    return str(resp.json()["jobId"])


def _load_recipe(path: str | None) -> dict[str, Any]:
    """The --recipe file as sent to the API, checked first as the API checks it (so a typo
    costs no upload)."""
    if path is None:
        return {}
    try:
        raw = Path(path).read_bytes()
        recipe = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise CliError(f"--recipe {path}: {exc}") from None
    if not isinstance(recipe, dict):
        raise CliError(f"--recipe {path}: must hold a JSON object")
    try:
        decode_recipe(raw)
    except (msgspec.ValidationError, RecipeError) as exc:
        raise CliError(f"--recipe {path}: {INVALID_RECIPE}: {exc}") from None
    return recipe


def _finish(args: argparse.Namespace, api: Api, view: JobView) -> int:
    if args.json:
        print(json.dumps(msgspec.to_builtins(view), indent=2))
    else:
        print("\n".join(describe(view)))
    if view.status != "completed":
        code = view.error.code if view.error else "cancelled"
        note(f"audioprep: job {view.job_id} {view.status}: {code}")
        return 1
    if args.output:
        written = download(api, view, args.output)
        note(f"wrote {written} ({written.stat().st_size} bytes)")
    return 0


def _submit(args: argparse.Namespace) -> int:
    if args.recipe and not (args.save or args.preview):
        raise CliError("--recipe needs --save FORMAT or --preview", exit_code=2)
    if args.save and args.preview:
        raise CliError("choose one of --save and --preview", exit_code=2)
    out = args.output
    if out and not (args.save or args.preview):
        raise CliError("-o needs --save FORMAT or --preview (an ingest makes no file)", exit_code=2)
    if out and is_directory_target(out) and Path(out).exists() and not Path(out).is_dir():
        raise CliError(f"-o {out}: exists and is not a directory", exit_code=2)
    recipe = _load_recipe(args.recipe)
    settings = Settings.from_env()
    base = args.api or os.environ.get("AUDIOPREP_API_URL") or settings.base_url
    api_key = args.api_key or os.environ.get("AUDIOPREP_API_KEY")
    wait = args.wait or bool(args.output)
    api = Api(base, api_key, args.http_timeout)
    try:
        job_id = _ingest(api, args.source)
        note(f"ingest job {job_id} accepted (trace {logs.trace_id_of(api.traceparent)})")
        render = args.save or args.preview
        if not (wait or render):
            print(job_id)
            return 0
        view = follow(api, job_id, "ingest", args.timeout)
        if not render or view.status != "completed":
            return _finish(args, api, view)
        # With --json, stdout carries only the final view; the ingest summary goes to stderr.
        print("\n".join(describe(view)), file=sys.stderr if args.json else sys.stdout)
        source_key = view.result.source_key if view.result else None
        body: dict[str, Any] = {"sourceKey": source_key, "recipe": recipe}
        if args.save:
            body["format"] = args.save
            if args.filename:
                body["filename"] = args.filename
        kind = "save" if args.save else "preview"
        resp = api.request("POST", f"/api/audio/edit/{kind}", json=body)
        render_id = str(resp.json()["jobId"])
        note(f"{kind} job {render_id} accepted")
        if not wait:
            print(render_id)
            return 0
        return _finish(args, api, follow(api, render_id, kind, args.timeout))
    finally:
        api.close()


def register(commands: Any) -> None:
    p = commands.add_parser(
        "submit",
        help="send a file or URL to the API as an ingest job (then optionally save/preview)",
        description="Upload FILE (or ingest URL) through the HTTP API like any client. With "
        "--save/--preview the CLI waits for the ingest, then requests the render of its "
        "source. --wait shows live progress (from the job's Server-Sent Events; polling if "
        "they are unavailable) and prints the result. Exit code: 0 completed, 1 failed or "
        "cancelled or refused by the API (the error code is printed), 2 API unreachable.",
    )
    p.add_argument("source", metavar="FILE|URL", help="an audio file, or an http(s) URL")
    p.add_argument("--recipe", metavar="recipe.json", help="edit recipe (JSON) for the render")
    p.add_argument(
        "--save",
        metavar="FORMAT",
        choices=SAVE_FORMATS,
        help=f"render and save as FORMAT: {', '.join(SAVE_FORMATS)}",
    )
    p.add_argument("--filename", help="output file name for --save (default from the source)")
    p.add_argument("--preview", action="store_true", help="render a browser-playable preview")
    p.add_argument("--wait", action="store_true", help="follow progress and print the result")
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="download the result (implies --wait) to this file, or into this directory "
        "(OUT/ or an existing one: the server's file name, e.g. interview.mp3)",
    )
    p.add_argument("--json", action="store_true", help="print the final job view as JSON")
    p.add_argument(
        "--api",
        metavar="URL",
        help="API base URL (default AUDIOPREP_API_URL or http://AUDIOPREP_API_HOST:AUDIOPREP_API_PORT)",
    )
    p.add_argument("--api-key", metavar="KEY", help="API key (default AUDIOPREP_API_KEY)")
    p.add_argument(
        "--timeout", type=float, default=3600.0, help="give up waiting after this many seconds"
    )
    p.add_argument("--http-timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    p.set_defaults(func=_submit)
