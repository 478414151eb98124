"""`audioprep submit | jobs | events` as subprocesses against a real stack (uvicorn, NATS)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path

import httpx

from audioprep.shared.nats_server import free_port
from tests.cli.conftest import AUDIOPREP, CliStack, run_cli, wait_view
from tests.media import decode_pcm, junk_bytes, measure_duration_s, rms_db, stream_info, write_tone

JOB_ID = re.compile(r"\b[0-9A-HJKMNP-TV-Z]{26}\b")


async def _upload(stack: CliStack, path: Path) -> str:
    async with httpx.AsyncClient(base_url=stack.api_url) as client:
        with path.open("rb") as f:
            resp = await client.post("/api/audio/ingest", files={"file": (path.name, f)})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["jobId"])


async def test_submit_save_wait_downloads_a_measurable_file(
    cli_stack: CliStack, media_dir: Path
) -> None:
    wav = write_tone(media_dir / "tone.wav", seconds=3.0, freq=440.0, amplitude_dbfs=-20.0)
    recipe = media_dir / "recipe.json"
    recipe.write_text(json.dumps({"trim": {"startMs": 500, "endMs": 2500}, "gainDb": -6}))
    out = media_dir / "out.flac"
    r = await run_cli(
        cli_stack, "submit", str(wav), "--recipe", str(recipe), "--save", "flac", "-o", str(out)
    )
    assert r.code == 0, r.err
    assert "completed: ingest job" in r.out and "completed: save job" in r.out
    assert "polling" not in r.err  # progress came from the SSE stream
    assert re.search(r"save \w+: 100% completed", r.err), r.err
    assert f"wrote {out}" in r.err
    # The download is the render: 2 s (trimmed), flac, 6 dB quieter than the -20 dBFS source.
    assert abs(measure_duration_s(out) - 2.0) < 0.05
    assert stream_info(out)[0] == "flac"
    pcm, _ = decode_pcm(out)
    assert abs(rms_db(pcm) - (-23.0 - 6.0)) < 0.5


async def test_submit_without_wait_prints_the_job_id(cli_stack: CliStack, media_dir: Path) -> None:
    wav = write_tone(media_dir / "t.wav", seconds=1.0, freq=440.0)
    r = await run_cli(cli_stack, "submit", str(wav))
    assert r.code == 0, r.err
    job_id = r.out.strip()
    assert JOB_ID.fullmatch(job_id), r.out
    assert (await wait_view(cli_stack, job_id))["status"] == "completed"


async def test_submit_failure_exits_1_with_the_error_code(
    cli_stack: CliStack, media_dir: Path
) -> None:
    junk = media_dir / "junk.mp3"
    junk.write_bytes(junk_bytes(32 * 1024))
    r = await run_cli(cli_stack, "submit", str(junk), "--wait")
    assert r.code == 1, (r.out, r.err)
    assert "failed: ingest job" in r.out
    assert "unsupported_media" in r.out and "unsupported_media" in r.err


async def test_submit_refused_by_the_api_prints_the_problem(cli_stack: CliStack) -> None:
    r = await run_cli(cli_stack, "submit", "http://10.0.0.1/episode.mp3")  # a private address
    assert r.code == 1, (r.out, r.err)
    last = r.err.strip().splitlines()[-1]
    assert re.match(r"audioprep: 422 forbidden_url: ", last), r.err
    assert "Traceback" not in r.err


async def test_submit_checks_the_recipe_before_uploading(
    cli_stack: CliStack, media_dir: Path
) -> None:
    wav = write_tone(media_dir / "t.wav", seconds=1.0, freq=440.0)
    for bad, field in (
        ({"gainDb": 1000}, "$.gainDb"),
        ({"fadeIn": 100}, "fadeIn"),  # a typo: unknown field
        ({"trim": {"startMs": 900, "endMs": 100}}, "trim.endMs"),  # a cross-field rule
    ):
        recipe = media_dir / "bad.json"
        recipe.write_text(json.dumps(bad))
        r = await run_cli(cli_stack, "submit", str(wav), "--recipe", str(recipe), "--save", "wav")
        assert r.code == 1, (r.out, r.err)
        assert r.err.startswith(f"audioprep: --recipe {recipe}: invalid_recipe: "), r.err
        assert field in r.err and r.err.count("\n") == 1, r.err
        assert "ingest job" not in r.err  # nothing was uploaded


async def test_submit_output_into_a_directory_uses_the_servers_file_name(
    cli_stack: CliStack, media_dir: Path
) -> None:
    wav = write_tone(media_dir / "interview.wav", seconds=2.0, freq=440.0)
    new_dir = media_dir / "out"  # does not exist yet: the trailing slash says "directory"
    r = await run_cli(cli_stack, "submit", str(wav), "--save", "mp3", "-o", f"{new_dir}/")
    assert r.code == 0, r.err
    assert new_dir.is_dir(), r.err
    assert [p.name for p in new_dir.iterdir()] == ["interview.mp3"]
    assert stream_info(new_dir / "interview.mp3")[0].startswith("mp3")
    assert f"wrote {new_dir / 'interview.mp3'}" in r.err

    # --filename names the save; an existing directory needs no slash.
    r = await run_cli(
        cli_stack, "submit", str(wav), "--save", "flac", "--filename", "Episode 1",
        "-o", str(new_dir),
    )  # fmt: skip
    assert r.code == 0, r.err
    assert stream_info(new_dir / "Episode_1.flac")[0] == "flac"

    # A preview is named after its source and in its own format.
    previews = media_dir / "previews"
    previews.mkdir()
    r = await run_cli(cli_stack, "submit", str(wav), "--preview", "-o", str(previews))
    assert r.code == 0, r.err
    assert [p.name for p in previews.iterdir()] == ["interview.preview.opus"]
    assert stream_info(previews / "interview.preview.opus")[0] == "opus"

    # A plain path is a file name, whatever it is called.
    r = await run_cli(cli_stack, "submit", str(wav), "--save", "wav", "-o", str(media_dir / "x"))
    assert r.code == 0, r.err
    assert stream_info(media_dir / "x")[0].startswith("pcm_")


async def test_submit_usage_errors_exit_2_before_uploading(
    cli_stack: CliStack, media_dir: Path
) -> None:
    wav = write_tone(media_dir / "t.wav", seconds=1.0, freq=440.0)
    (media_dir / "file").write_text("")
    for args in (
        ["-o", str(media_dir)],  # an ingest has nothing to download
        ["--save", "mp3", "-o", f"{media_dir / 'file'}/"],  # a file is not a directory
        ["--save", "mp3", "--preview"],
    ):
        r = await run_cli(cli_stack, "submit", str(wav), *args)
        assert r.code == 2, (args, r.err)
        assert "ingest job" not in r.err and r.err.count("\n") == 1, r.err


async def test_connection_errors_are_one_clear_line(cli_stack: CliStack, media_dir: Path) -> None:
    dead = free_port()
    r = await run_cli(cli_stack, "jobs", "ls", "--nats-url", f"nats://127.0.0.1:{dead}")
    assert r.code == 2
    assert r.err.count("\n") == 1 and "Traceback" not in r.err
    assert f"127.0.0.1:{dead}" in r.err and "audioprep up" in r.err
    wav = write_tone(media_dir / "t.wav", seconds=1.0, freq=440.0)
    r = await run_cli(cli_stack, "submit", str(wav), "--api", f"http://127.0.0.1:{dead}")
    assert r.code == 2
    assert r.err.count("\n") == 1 and "Traceback" not in r.err
    assert f"http://127.0.0.1:{dead}" in r.err and "audioprep up" in r.err


async def test_jobs_show_and_ls(cli_stack: CliStack, media_dir: Path) -> None:
    job_id = await _upload(cli_stack, write_tone(media_dir / "a.wav", seconds=1.0, freq=440.0))
    await wait_view(cli_stack, job_id)

    r = await run_cli(cli_stack, "jobs", "show", job_id)
    assert r.code == 0, r.err
    assert re.search(r"^status:\s+completed$", r.out, re.M), r.out
    assert re.search(r"^kind:\s+ingest$", r.out, re.M)
    lines = [ln for ln in r.out.splitlines() if f"jobs.ingest.{job_id}." in ln]
    types = [ln.split()[3] for ln in lines]
    assert types[:3] == ["JobRequested", "JobReleased", "JobStarted"]  # fair dispatch
    assert types[-1] == "JobCompleted"
    seqs = [int(ln.split()[1].lstrip("#")) for ln in lines]
    assert seqs == sorted(seqs)

    r = await run_cli(cli_stack, "jobs", "show", job_id, "--json")
    doc = json.loads(r.out)
    assert doc["view"]["status"] == "completed"
    assert doc["view"]["seq"] == doc["events"][-1]["seq"]
    assert [e["event"]["type"] for e in doc["events"]][-1] == "JobCompleted"

    r = await run_cli(
        cli_stack, "jobs", "ls", "--kind", "ingest", "--status", "completed", "--limit", "0"
    )
    assert r.code == 0, r.err
    row = next(ln for ln in r.out.splitlines() if ln.startswith(job_id))
    assert row.split()[1:4] == ["ingest", "completed", "100%"]
    r = await run_cli(cli_stack, "jobs", "ls", "--status", "failed", "--limit", "0", "--json")
    assert job_id not in r.out and isinstance(json.loads(r.out), list)

    r = await run_cli(cli_stack, "jobs", "show", "01ZZZZZZZZZZZZZZZZZZZZZZZZ")
    assert r.code == 1 and "no job 01ZZZZZZZZZZZZZZZZZZZZZZZZ" in r.err


async def test_events_replay(cli_stack: CliStack, media_dir: Path) -> None:
    job_id = await _upload(cli_stack, write_tone(media_dir / "b.wav", seconds=1.0, freq=440.0))
    await wait_view(cli_stack, job_id)

    r = await run_cli(cli_stack, "events", "replay", "--job", job_id)
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert all(f".{job_id}." in ln for ln in lines)
    assert lines[0].split()[3] == "JobRequested" and "filename=b.wav" in lines[0]
    assert lines[-1].split()[3] == "JobCompleted" and "durationMs=1000" in lines[-1]
    first_seq = int(lines[0].split()[1].lstrip("#"))

    # From a sequence, one kind, as JSON lines: the job's events are there with their headers.
    r = await run_cli(
        cli_stack, "events", "replay", "--since", str(first_seq), "--kind", "ingest", "--json"
    )
    assert r.code == 0, r.err
    docs = [json.loads(ln) for ln in r.out.splitlines()]
    assert docs[0]["seq"] == first_seq
    assert all(d["subject"].startswith("jobs.ingest.") for d in docs)
    mine = [d for d in docs if d["event"]["jobId"] == job_id]
    assert [d["event"]["type"] for d in mine][-1] == "JobCompleted"
    assert mine[0]["headers"]["Nats-Msg-Id"] == job_id

    # From a time: a duration back from now, and an ISO instant (the job's first event's).
    r = await run_cli(cli_stack, "events", "replay", "--since", "10m", "--job", job_id, "--json")
    assert json.loads(r.out.splitlines()[0])["seq"] == first_seq
    first_time = json.loads(r.out.splitlines()[0])["time"]
    r = await run_cli(cli_stack, "events", "replay", "--since", first_time, "--json")
    assert json.loads(r.out.splitlines()[0])["seq"] == first_seq

    # Following a finished job prints its history and exits after the terminal event.
    r = await run_cli(cli_stack, "events", "tail", "--job", job_id)
    assert r.code == 0, r.err
    assert r.out.splitlines()[-1].split()[3] == "JobCompleted"


async def test_events_tail_follows_new_events_live(cli_stack: CliStack, media_dir: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        AUDIOPREP,
        "events",
        "tail",
        "--kind",
        "ingest",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_stack.env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        header = await asyncio.wait_for(proc.stderr.readline(), timeout=30)
        assert header.startswith(b"# following stream JOBS, subject jobs.ingest.>")
        job_id = await _upload(cli_stack, write_tone(media_dir / "c.wav", seconds=1.0, freq=440))
        seen: list[str] = []
        while not any("JobCompleted" in ln for ln in seen):
            line = (await asyncio.wait_for(proc.stdout.readline(), timeout=30)).decode()
            assert line, "tail ended early"
            if f".{job_id}." in line:
                seen.append(line)
        assert seen[0].split()[3] == "JobRequested"
        assert any(ln.split()[3] == "JobProgressed" and "%" in ln for ln in seen)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), timeout=30)
    assert code == 130
    assert b"Traceback" not in await proc.stderr.read()


async def test_help_reads_well() -> None:
    proc = await asyncio.create_subprocess_exec(
        AUDIOPREP, "--help", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    for command in ("submit", "jobs", "events", "up"):
        assert f"    {command} " in out.decode()
    proc = await asyncio.create_subprocess_exec(
        AUDIOPREP, "submit", "--help", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert "wav, flac, mp3, opus, aac" in " ".join(out.decode().split())  # --save's formats


async def test_submit_preview_json_prints_only_the_final_view(
    cli_stack: CliStack, media_dir: Path
) -> None:
    wav = write_tone(media_dir / "p.wav", seconds=2.0, freq=440.0)
    recipe = media_dir / "r.json"
    recipe.write_text(json.dumps({"fadeInMs": 300}))
    r = await run_cli(
        cli_stack, "submit", str(wav), "--preview", "--recipe", str(recipe), "--wait", "--json"
    )
    assert r.code == 0, r.err
    view = json.loads(r.out)  # stdout is exactly one JSON document
    assert (view["kind"], view["status"]) == ("preview", "completed")
    assert view["result"]["previewKey"] and view["downloadUrl"]
    assert "completed: ingest job" in r.err


async def test_submit_and_jobs_show_print_the_loudness_report(
    cli_stack: CliStack, media_dir: Path
) -> None:
    """Issue 14: the report is shown by `submit --wait` and `jobs show`."""
    wav = write_tone(media_dir / "tone.wav", seconds=4.0, freq=997.0, amplitude_dbfs=-30.0)
    recipe = media_dir / "recipe.json"
    recipe.write_text(json.dumps({"normalize": {"preset": "ebu-r128"}, "highpassHz": 80}))
    r = await run_cli(
        cli_stack, "submit", str(wav), "--recipe", str(recipe), "--save", "wav", "--wait"
    )
    assert r.code == 0, r.err
    save_part = r.out.split("completed: save job", 1)[1]
    loudness = next(x for x in save_part.splitlines() if x.strip().startswith("loudness"))
    assert "→" in loudness and "target ebu-r128 -23 LUFS" in loudness
    assert re.search(r"applied\s+gain \+7\.\d dB", save_part), save_part
    assert re.search(r"voice\s+highpass 80 Hz", save_part), save_part
    save_id = JOB_ID.findall(r.out)[-1]
    shown = await run_cli(cli_stack, "jobs", "show", save_id)
    assert shown.code == 0, shown.err
    assert "target ebu-r128 -23 LUFS" in shown.out and "applied" in shown.out
