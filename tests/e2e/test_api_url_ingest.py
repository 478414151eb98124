"""URL ingest end to end against a local HTTP server: direct file, HTML page, every error path,
the SSRF guard, and cancelling pending, running and retrying jobs."""

from __future__ import annotations

import asyncio
import functools
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from audioprep.domain.errors import Permanent
from audioprep.services.worker.media_process import run_media_call
from audioprep.services.worker.ytdlp_fetch import download
from tests.conftest import Stack
from tests.e2e.test_api_support import event_types, history, local_path
from tests.jobs_helpers import wait_for_job
from tests.media import write_tone

SLOW_CHUNK = 4096
SLOW_PAUSE_S = 0.05  # the "network": ~80 KB/s, so a 1 MB file takes ~12 s


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        port = self.server.server_address[1]
        if self.path == "/redirect-private":
            self._redirect(f"http://127.0.0.2:{port}/tone.mp3")
        elif self.path == "/redirect-ok":
            self._redirect(f"http://localhost:{port}/tone.mp3")
        elif self.path.startswith("/feed"):
            hours = "05:00:00" if self.path == "/feed-long.xml" else "00:00:03"
            self._feed(f"http://127.0.0.1:{port}/tone.mp3", hours)
        elif self.path == "/unavailable.mp3":
            self.send_error(503)
        elif self.path.startswith("/slow"):
            self._slow(Path(self.directory) / "long.mp3")
        else:
            super().do_GET()

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _feed(self, enclosure: str, duration: str) -> None:
        """A podcast RSS feed whose first episode is the tone (with an announced duration)."""
        body = (
            '<?xml version="1.0"?><rss version="2.0" '
            'xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd"><channel><title>Pod</title>'
            f'<item><title>Episode 1</title><enclosure url="{enclosure}" type="audio/mpeg" '
            f'length="1"/><itunes:duration>{duration}</itunes:duration></item></channel></rss>'
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/rss+xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _slow(self, path: Path) -> None:
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "audio/mpeg")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            for i in range(0, len(data), SLOW_CHUNK):
                self.wfile.write(data[i : i + SLOW_CHUNK])
                self.wfile.flush()
                time.sleep(SLOW_PAUSE_S)
        except (BrokenPipeError, ConnectionResetError):
            return


_ROOTS: dict[str, Path] = {}  # site URL → the directory it serves


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("site")
    write_tone(root / "tone.mp3", seconds=3.0, freq=440.0, codec="libmp3lame")
    write_tone(root / "long.mp3", seconds=60.0, freq=220.0, codec="libmp3lame")
    (root / "page.html").write_text(
        "<html><head><title>Morning show</title></head><body>"
        '<audio controls src="/tone.mp3"></audio></body></html>'
    )
    (root / "text.html").write_text("<html><body><p>no media here</p></body></html>")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    _ROOTS[url] = root
    yield url
    server.shutdown()
    server.server_close()


async def _ingest_url(stack: Stack, url: str, source: str = "url", **headers: str) -> str:
    resp = await stack.client.post(
        "/api/audio/ingest", json={"source": source, "url": url}, headers=headers
    )
    assert resp.status_code == 202, resp.text
    return str(resp.json()["jobId"])


async def _wait_stage(stack: Stack, job_id: str, stage: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        view = (await stack.client.get(f"/api/audio/jobs/{job_id}")).json()
        if view["stage"] == stage:
            return view
        assert view["status"] not in ("completed", "failed", "cancelled"), view
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached stage {stage}: {view}")


async def test_direct_audio_link_is_ingested(stack: Stack, site: str) -> None:
    job_id = await _ingest_url(stack, f"{site}/tone.mp3")
    view = await wait_for_job(stack.client, job_id)
    assert view["status"] == "completed", view
    result = view["result"]
    assert abs(result["durationMs"] - 3000) <= 50
    assert result["codec"] == "mp3"
    assert result["sourceKey"] == f"sources/{job_id}/tone.mp3"
    assert "title" not in result  # a bare file link has no title
    stored = local_path(stack, result["sourceKey"])
    assert stored.read_bytes() == (_ROOTS[site] / "tone.mp3").read_bytes()
    stages = [s.event.stage for s in await history(stack, job_id) if hasattr(s.event, "stage")]
    assert "downloading" in stages and "analysing" in stages


async def test_html_page_with_audio_tag_is_ingested(stack: Stack, site: str) -> None:
    job_id = await _ingest_url(stack, f"{site}/page.html")
    view = await wait_for_job(stack.client, job_id)
    assert view["status"] == "completed", view
    assert view["result"]["title"] == "Morning show"
    assert abs(view["result"]["durationMs"] - 3000) <= 50
    assert view["result"]["sourceKey"].startswith(f"sources/{job_id}/Morning_show")


async def test_podcast_feed_first_episode_is_ingested(stack: Stack, site: str) -> None:
    job_id = await _ingest_url(stack, f"{site}/feed.xml")
    view = await wait_for_job(stack.client, job_id)
    assert view["status"] == "completed", view
    assert view["result"]["title"] == "Episode 1"


async def test_announced_duration_over_the_limit_fails_before_download(
    stack: Stack, site: str
) -> None:
    job_id = await _ingest_url(stack, f"{site}/feed-long.xml")  # 5 h > AUDIOPREP_MAX_DURATION_S
    view = await wait_for_job(stack.client, job_id)
    assert view["status"] == "failed", view
    assert view["error"]["code"] == "too_long"
    assert "18000 s" in view["error"]["message"]


async def test_redirect_to_an_allowed_host_is_followed(stack: Stack, site: str) -> None:
    job_id = await _ingest_url(stack, f"{site}/redirect-ok")
    view = await wait_for_job(stack.client, job_id)
    assert view["status"] == "completed", view


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/missing.mp3", "source_not_found"),
        ("/text.html", "unsupported_url"),
        ("/redirect-private", "forbidden_url"),
    ],
)
async def test_url_failures_have_codes(stack: Stack, site: str, path: str, code: str) -> None:
    job_id = await _ingest_url(stack, f"{site}{path}")
    view = await wait_for_job(stack.client, job_id)
    assert view["status"] == "failed", view
    assert view["error"]["code"] == code, view
    assert view["error"]["retryable"] is False
    assert await event_types(stack, job_id) == [
        "JobRequested",
        "JobStarted",
        "JobProgressed",
        "JobFailed",
    ]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"source": "url", "url": "http://10.1.2.3/a.mp3"}, "forbidden_url"),
        ({"source": "url", "url": "http://169.254.169.254/latest/meta-data"}, "forbidden_url"),
        ({"source": "url", "url": "http://[::ffff:127.0.0.1]/a.mp3"}, "forbidden_url"),
        ({"source": "url", "url": "http://0x7f.1/a.mp3"}, "forbidden_url"),
        ({"source": "url", "url": "http://printer.localhost/a.mp3"}, "forbidden_url"),
        ({"source": "url", "url": "ftp://example.com/a.mp3"}, "unsupported_url"),
        ({"source": "url", "url": "file:///etc/passwd"}, "unsupported_url"),
        ({"source": "url", "url": "http:///nohost"}, "unsupported_url"),
        ({"source": "url", "url": "http://example.com:99999/"}, "unsupported_url"),
        ({"source": "youtube", "url": "https://example.com/watch?v=x"}, "unsupported_url"),
        ({"source": "url", "url": ""}, "validation_error"),
        ({"source": "vimeo", "url": "https://example.com/"}, "validation_error"),
    ],
)
async def test_url_refused_at_the_api(stack: Stack, body: dict[str, str], code: str) -> None:
    resp = await stack.client.post("/api/audio/ingest", json=body)
    assert resp.status_code == 422, resp.text
    problem = resp.json()
    assert problem["code"] == code, problem
    assert problem["field"] in ("url", "source")


async def test_url_ingest_idempotency(stack: Stack, site: str) -> None:
    headers = {"Idempotency-Key": "url-ingest-1"}
    first = await _ingest_url(stack, f"{site}/tone.mp3", **headers)
    second = await _ingest_url(stack, f"{site}/tone.mp3", **headers)
    assert first == second
    assert (await wait_for_job(stack.client, first))["status"] == "completed"
    assert await _ingest_url(stack, f"{site}/tone.mp3", **headers) == first


async def test_download_limits_are_permanent_errors(site: str, tmp_path: Path) -> None:
    """Size limit (from Content-Length and while streaming) in the fetch's child process."""
    with pytest.raises(Permanent) as err:
        await run_media_call(
            download,
            f"{site}/tone.mp3",
            "url",
            str(tmp_path),
            max_bytes=10_000,
            max_duration_s=3600,
            allow_hosts=frozenset({"127.0.0.1"}),
        )
    assert err.value.code == "too_large"
    with pytest.raises(Permanent) as err:
        await run_media_call(
            download,
            f"{site}/tone.mp3",
            "url",
            str(tmp_path),
            max_bytes=10**9,
            max_duration_s=3600,
            allow_hosts=frozenset(),  # nothing allowed: 127.0.0.1 is loopback
        )
    assert err.value.code == "forbidden_url"


async def test_cancel_pending_running_and_retrying_jobs(stack: Stack, site: str) -> None:
    # Two slow downloads take both worker slots (AUDIOPREP_WORKER_CONCURRENCY=2 in tests).
    running = [await _ingest_url(stack, f"{site}/slow-{i}.mp3") for i in range(2)]
    for job_id in running:
        await _wait_stage(stack, job_id, "downloading")
    # A third job can't start: cancelling it is immediate.
    pending = await _ingest_url(stack, f"{site}/tone.mp3")
    resp = await stack.client.post(f"/api/audio/jobs/{pending}/cancel")
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "cancelled"
    assert (await stack.client.get(f"/api/audio/jobs/{pending}")).json()["status"] == "cancelled"

    # Running jobs stop when their worker confirms; partial outputs are removed.
    for job_id in running:
        resp = await stack.client.post(f"/api/audio/jobs/{job_id}/cancel")
        assert resp.status_code == 202, resp.text
        assert resp.json()["status"] == "running"
        assert resp.json()["cancelRequested"] is True
    for job_id in running:
        view = await wait_for_job(stack.client, job_id)
        assert view["status"] == "cancelled", view
        assert "JobCancelled" in await event_types(stack, job_id)
        assert not local_path(stack, f"sources/{job_id}").exists()

    # The pending one gets its JobCancelled from the worker that finally takes it.
    deadline = time.monotonic() + 30
    while "JobCancelled" not in await event_types(stack, pending):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert "JobStarted" not in await event_types(stack, pending)

    # Cancelling a finished job changes nothing.
    again = await stack.client.post(f"/api/audio/jobs/{pending}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    assert (await event_types(stack, pending)).count("JobCancelRequested") == 1


async def test_server_errors_are_retried_then_cancellable(stack: Stack, site: str) -> None:
    job_id = await _ingest_url(stack, f"{site}/unavailable.mp3")
    view = await _wait_stage(stack, job_id, "retrying")
    assert view["status"] == "pending"
    assert view["error"] == {
        "code": "download_failed",
        "message": view["error"]["message"],
        "retryable": True,
    }
    resp = await stack.client.post(f"/api/audio/jobs/{job_id}/cancel")
    assert resp.status_code == 202
    view = await wait_for_job(stack.client, job_id)
    assert view["status"] == "cancelled", view


async def test_cancel_unknown_job_is_404(stack: Stack) -> None:
    resp = await stack.client.post("/api/audio/jobs/01ZZZZZZZZZZZZZZZZZZZZZZZZ/cancel")
    assert resp.status_code == 404 and resp.json()["code"] == "job_not_found"
    resp = await stack.client.post("/api/audio/jobs/not-an-id/cancel")
    assert resp.status_code == 404
