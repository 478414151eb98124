"""The blocking half of URL ingest: yt-dlp in a child process, behind the SSRF resolver guard.

Runs through `run_media_call` (its own process): yt-dlp blocks and is GIL-heavy, the guard
patches `socket.getaddrinfo` process-wide, and cancelling a job simply terminates the child.
Every failure leaves here as a typed `Permanent`/`Retryable` with a stable code.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yt_dlp
from yt_dlp.networking.exceptions import HTTPError, TransportError
from yt_dlp.utils import DownloadCancelled, DownloadError, ExtractorError, UnsupportedError

from audioprep.domain.errors import (
    DOWNLOAD_FAILED,
    SOURCE_NOT_FOUND,
    TOO_LARGE,
    TOO_LONG,
    UNSUPPORTED_URL,
    AudioprepError,
    Permanent,
    Retryable,
)
from audioprep.shared.url_guard import ForbiddenUrl, check_url, guarded_resolver

log = logging.getLogger("audioprep.worker.fetch")

YOUTUBE_EXTRACTORS = ["youtube", "youtube:tab", "youtube:shorts"]
SOCKET_TIMEOUT_S = 20
_GONE = (404, 410)
_TRY_LATER = (408, 425, 429)


@dataclass(frozen=True, slots=True)
class Downloaded:
    path: str
    title: str | None
    ext: str


class _Quiet:
    """yt-dlp logger: keep the last error text, send the rest to our debug log."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def debug(self, msg: str) -> None:
        log.debug(msg)

    def info(self, msg: str) -> None:
        log.debug(msg)

    def warning(self, msg: str) -> None:
        log.debug(msg)

    def error(self, msg: str) -> None:
        self.errors.append(msg)


def download(
    url: str,
    source: str,
    out_dir: str,
    *,
    max_bytes: int,
    max_duration_s: int,
    allow_hosts: frozenset[str],
    on_progress: Callable[[float], None] | None = None,
) -> Downloaded:
    """Fetch the best audio of `url` into `out_dir`; typed errors on every failure."""
    check_url(url, allow_hosts)
    aborted: list[AudioprepError] = []  # why a hook stopped yt-dlp (it rewraps exceptions)
    with guarded_resolver(allow_hosts) as refused:
        try:
            return _download(
                url, source, Path(out_dir), max_bytes, max_duration_s, on_progress, aborted
            )
        except AudioprepError:
            raise
        except Exception as exc:
            if aborted:
                raise aborted[0] from None
            if refused:
                raise refused[0] from None
            raise classify(exc) from None


def _download(
    url: str,
    source: str,
    out_dir: Path,
    max_bytes: int,
    max_duration_s: int,
    on_progress: Callable[[float], None] | None,
    aborted: list[AudioprepError],
) -> Downloaded:
    def stop(error: AudioprepError) -> NoReturn:
        aborted.append(error)
        raise DownloadCancelled(error.message)

    def match(info: dict[str, Any], *, incomplete: bool = False) -> str | None:
        if info.get("is_live") or info.get("live_status") in ("is_live", "is_upcoming"):
            stop(Permanent("live streams can't be ingested", code=UNSUPPORTED_URL))
        duration = info.get("duration")
        if isinstance(duration, int | float) and duration > max_duration_s:
            stop(
                Permanent(
                    f"audio is {duration:.0f} s long; the limit is {max_duration_s} s",
                    code=TOO_LONG,
                )
            )
        return None

    def hook(d: dict[str, Any]) -> None:
        done = int(d.get("downloaded_bytes") or 0)
        total = int(d.get("total_bytes") or d.get("total_bytes_estimate") or 0)
        if done > max_bytes or total > max_bytes:
            stop(Permanent(f"the download exceeds the limit of {max_bytes} bytes", code=TOO_LARGE))
        if on_progress is not None and total > 0:
            on_progress(done / total)

    logger = _Quiet()
    params: dict[str, Any] = {
        "format": "bestaudio/best",
        "outtmpl": {"default": "source.%(ext)s"},
        "paths": {"home": str(out_dir), "temp": str(out_dir)},
        "noplaylist": True,
        "playlist_items": "1",
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "logger": logger,
        "progress_hooks": [hook],
        "match_filter": match,
        "proxy": "",  # ignore *_proxy variables: the guard must see the real target
        "socket_timeout": SOCKET_TIMEOUT_S,
        "retries": 1,
        "fragment_retries": 1,
        "extractor_retries": 0,
        "external_downloader": {"default": "native"},  # no ffmpeg fetching on its own
        "cachedir": False,
        "overwrites": True,
        "postprocessors": [],
        "color": "no_color",
    }
    if source == "youtube":
        params["allowed_extractors"] = YOUTUBE_EXTRACTORS
    with yt_dlp.YoutubeDL(params) as ydl:
        info = ydl.extract_info(url, download=True)
    if info is None:
        raise Permanent(
            logger.errors[-1] if logger.errors else "nothing to download", code=UNSUPPORTED_URL
        )
    if info.get("_type") == "playlist":
        entries = [e for e in info.get("entries") or [] if e]
        if not entries:
            raise Permanent("the page has no audio", code=UNSUPPORTED_URL)
        info = entries[0]
    downloads = info.get("requested_downloads") or []
    path = downloads[0].get("filepath") if downloads else None
    if not path or not Path(path).exists():
        found = sorted(out_dir.glob("source.*"))
        if not found:
            raise Permanent("the page has no downloadable audio", code=UNSUPPORTED_URL)
        path = str(found[0])
    if info.get("acodec") == "none":
        raise Permanent("the media has no audio track", code=UNSUPPORTED_URL)
    return Downloaded(
        path=str(path), title=_title(info), ext=Path(path).suffix.lstrip(".") or "bin"
    )


def _title(info: dict[str, Any]) -> str | None:
    """The site's title; none for a bare file link (its name is no title)."""
    title = info.get("title")
    if not isinstance(title, str) or not title.strip():
        return None
    basename = str(info.get("webpage_url_basename") or "")
    if info.get("direct") and title == basename.rsplit(".", 1)[0]:
        return None  # yt-dlp names a bare file link after its file name
    if info.get("extractor") == "html5":  # `<page title> (1)` for the first media tag
        title = re.sub(r"\s\(\d+\)$", "", title)
    return title.strip()[:300] or None


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and everything it wraps (yt-dlp nests errors several levels deep)."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        cur = todo.pop()
        if cur is None or any(cur is s for s in seen) or len(seen) > 20:
            continue
        seen.append(cur)
        todo.append(cur.__cause__)
        todo.append(cur.__context__)
        if isinstance(cur, DownloadError) and cur.exc_info:
            todo.append(cur.exc_info[1])
        if isinstance(cur, ExtractorError):
            todo.append(cur.cause if isinstance(cur.cause, BaseException) else None)
    return seen


def classify(exc: BaseException) -> AudioprepError:
    """yt-dlp failure → our stable codes (404 → source_not_found, network → retryable)."""
    message = str(exc).removeprefix("ERROR: ").strip() or type(exc).__name__
    causes = _causes(exc)
    for cause in causes:
        if isinstance(cause, ForbiddenUrl):
            return cause
        if isinstance(cause, HTTPError):
            status = cause.status
            if status in _GONE:
                return Permanent(f"the URL answered HTTP {status}", code=SOURCE_NOT_FOUND)
            if status in _TRY_LATER or status >= 500:
                return Retryable(f"the URL answered HTTP {status}", code=DOWNLOAD_FAILED)
            return Permanent(f"the URL answered HTTP {status}", code=DOWNLOAD_FAILED)
    if any(isinstance(c, UnsupportedError) for c in causes) or "Unsupported URL" in message:
        return Permanent(f"no audio found at this URL: {message}", code=UNSUPPORTED_URL)
    if "No suitable extractor" in message:
        return Permanent(f"not a supported site for this source: {message}", code=UNSUPPORTED_URL)
    if "Requested format is not available" in message or "No video formats" in message:
        return Permanent(f"no audio found at this URL: {message}", code=UNSUPPORTED_URL)
    if any(isinstance(c, TransportError | OSError | TimeoutError) for c in causes):
        return Retryable(f"download failed: {message}", code=DOWNLOAD_FAILED)
    lowered = message.lower()
    if "unavailable" in lowered or "private video" in lowered or "has been removed" in lowered:
        return Permanent(message, code=SOURCE_NOT_FOUND)
    return Retryable(f"download failed: {message}", code=DOWNLOAD_FAILED)
