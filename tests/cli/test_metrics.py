"""/metrics on the API and the metrics ports of worker and projector move when jobs run."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from audioprep.domain import kinds
from audioprep.shared import metrics
from audioprep.shared.names import Names
from tests.cli.conftest import CliStack, wait_view
from tests.media import junk_bytes, write_tone

NAMES = Names()  # the default prefix: what `audioprep up` uses

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


async def scrape(url: str) -> Samples:
    async with httpx.AsyncClient() as client:
        resp = await client.get(url)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    return parse(resp.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def _post(stack: CliStack, path: str, **kwargs: object) -> str:
    async with httpx.AsyncClient(base_url=stack.api_url) as client:
        resp = await client.post(path, **kwargs)  # type: ignore[arg-type]
    assert resp.status_code == 202, resp.text
    return str(resp.json()["jobId"])


async def test_metrics_move_when_jobs_run(cli_stack: CliStack, media_dir: Path) -> None:
    api_url = f"{cli_stack.api_url}/metrics"
    worker_url = f"http://127.0.0.1:{cli_stack.worker_metrics_port}/metrics"
    projector_url = f"http://127.0.0.1:{cli_stack.projector_metrics_port}/metrics"
    api0, worker0, proj0 = [await scrape(u) for u in (api_url, worker_url, projector_url)]

    wav = write_tone(media_dir / "m.wav", seconds=1.0, freq=440.0)
    junk = media_dir / "junk.mp3"
    junk.write_bytes(junk_bytes(16 * 1024))
    with wav.open("rb") as f:
        ok = await _post(cli_stack, "/api/audio/ingest", files={"file": ("m.wav", f)})
    with junk.open("rb") as f:
        bad = await _post(cli_stack, "/api/audio/ingest", files={"file": ("junk.mp3", f)})
    ok_view = await wait_view(cli_stack, ok)
    assert (await wait_view(cli_stack, bad))["status"] == "failed"
    source_key = ok_view["result"]["sourceKey"]  # type: ignore[index]
    save = await _post(
        cli_stack,
        "/api/audio/edit/save",
        json={"sourceKey": source_key, "recipe": {"gainDb": -3}, "format": "wav"},
    )
    save_view = await wait_view(cli_stack, save)
    assert save_view["status"] == "completed"

    api1, worker1, proj1 = [await scrape(u) for u in (api_url, worker_url, projector_url)]

    def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved(api0, api1, "audioprep_jobs_requested_total", kind="ingest") >= 2
    assert moved(api0, api1, "audioprep_jobs_requested_total", kind="save") >= 1
    assert moved(worker0, worker1, "audioprep_jobs_started_total", kind="ingest") >= 2
    assert moved(worker0, worker1, "audioprep_jobs_completed_total", kind="ingest") >= 1
    assert moved(worker0, worker1, "audioprep_jobs_completed_total", kind="save") >= 1
    failed = moved(
        worker0, worker1, "audioprep_jobs_failed_total", kind="ingest", code="unsupported_media"
    )
    assert failed >= 1
    assert (
        moved(
            worker0,
            worker1,
            "audioprep_job_duration_seconds_count",
            kind="ingest",
            outcome="completed",
        )
        >= 1
    )
    assert moved(worker0, worker1, "audioprep_render_seconds_count", kind="save", format="wav") >= 1
    assert value(worker1, "audioprep_render_seconds_sum", kind="save", format="wav") > 0
    assert value(worker1, "audioprep_jobs_active", kind="ingest") >= 0
    for kind in kinds.KINDS:  # sampled from the consumers at scrape time
        assert ("audioprep_queue_pending", frozenset({("kind", kind)})) in api1
        assert ("audioprep_queue_pending", frozenset({("kind", kind)})) in worker1

    assert moved(proj0, proj1, "audioprep_projector_events_total", type="JobCompleted") >= 2
    assert value(proj1, "audioprep_projector_applied_seq") >= int(save_view["seq"])  # type: ignore[call-overload]
    assert value(proj1, "audioprep_projector_lag_events") >= 0
    assert value(proj1, "audioprep_stream_last_seq") >= int(save_view["seq"])  # type: ignore[call-overload]
    assert ("audioprep_projector_checkpoint_lag_events", frozenset()) in api1


async def test_projector_lag_is_stream_last_minus_applied(cli_stack: CliStack) -> None:
    js = cli_stack.nc.jetstream()
    last = (await js.stream_info(NAMES.stream)).state.last_seq
    await metrics.projector_sampler(js, Names(), lambda: 0)()
    assert metrics.projector_lag()._value.get() >= last  # type: ignore[attr-defined]
    await metrics.projector_sampler(js, Names(), lambda: 10**12)()
    assert metrics.projector_lag()._value.get() == 0  # type: ignore[attr-defined]


async def test_metrics_port_answers_404_elsewhere_and_0_means_off(cli_stack: CliStack) -> None:
    async with httpx.AsyncClient() as client:
        resp = await client.get(f"http://127.0.0.1:{cli_stack.worker_metrics_port}/nope")
    assert resp.status_code == 404
    async with metrics.serving("127.0.0.1", 0) as port:
        assert port == 0
    # A taken port is skipped with a warning, not a crash (several workers on one host).
    async with metrics.serving("127.0.0.1", cli_stack.worker_metrics_port) as port:
        assert port == 0
