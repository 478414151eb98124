"""The routes behind the page: `/`, `/static/...` and the peaks of an ingest job (no browser)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import Stack
from tests.jobs_helpers import wait_for_job
from tests.media import junk_bytes, write_tone


async def _ingest(stack: Stack, path: Path) -> str:
    with path.open("rb") as f:
        resp = await stack.client.post("/api/audio/ingest", files={"file": (path.name, f)})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["jobId"])


async def test_page_and_assets_are_served(stack: Stack) -> None:
    page = await stack.client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "no-cache" in page.headers["cache-control"]
    assert '<script type="module" src="/static/app.js">' in page.text
    script = await stack.client.get("/static/app.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    style = await stack.client.get("/static/style.css")
    assert style.status_code == 200
    assert style.headers["content-type"].startswith("text/css")
    missing = await stack.client.get("/static/nope.js")
    assert missing.status_code == 404


async def test_peaks_of_a_completed_ingest(stack: Stack, media_dir: Path) -> None:
    job_id = await _ingest(stack, write_tone(media_dir / "peaks.wav", seconds=2.0))
    view = await wait_for_job(stack.client, job_id)
    assert view["status"] == "completed", view
    resp = await stack.client.get(f"/api/audio/jobs/{job_id}/peaks")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    peaks = resp.json()
    assert peaks["version"] == 1
    assert peaks["points"] == len(peaks["min"]) == len(peaks["max"]) > 100
    # A -20 dBFS sine: peaks near ±0.1 everywhere.
    assert 0.09 < max(peaks["max"]) < 0.11
    assert -0.11 < min(peaks["min"]) < -0.09


async def test_peaks_problems(stack: Stack, media_dir: Path) -> None:
    unknown = await stack.client.get("/api/audio/jobs/01ZZZZZZZZZZZZZZZZZZZZZZZZ/peaks")
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "job_not_found"

    junk = media_dir / "junk.wav"
    junk.write_bytes(junk_bytes(16 * 1024))
    job_id = await _ingest(stack, junk)
    view = await wait_for_job(stack.client, job_id)
    assert view["status"] == "failed"
    resp = await stack.client.get(f"/api/audio/jobs/{job_id}/peaks")
    assert resp.status_code == 409
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["code"] == "job_not_completed"


async def test_schema_docs_reference_only_this_host(stack: Stack) -> None:
    """Issue 15 bug 9: the docs page's scripts, styles and icon are served by the API."""
    page = await stack.client.get("/schema")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    head = page.text.split("<body", 1)[0]
    urls = re.findall(r"""(?:src|href)=["']([^"']+)""", head)
    assert urls, head
    assert all(url.startswith("/schema/assets/") for url in urls), urls
    assert "fonts.googleapis" not in page.text and "cdn." not in page.text
    for url in urls:
        asset = await stack.client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 100, url
    script = await stack.client.get("/schema/assets/swagger-ui-bundle.js")
    assert "javascript" in script.headers["content-type"]
    assert "max-age=86400" in script.headers["cache-control"]
    document = await stack.client.get("/schema/openapi.json")
    assert document.status_code == 200
    assert "/api/audio/ingest" in document.json()["paths"]
