"""Media children serve several calls, but only after clean results, and each call gets the
whole CPU limit; the small probe of PCM WAVs gives the same analysis as the large one."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import numpy as np
import pytest

from audioprep.domain.errors import MEDIA_CRASH, Permanent, Retryable
from audioprep.services.worker import media_process
from audioprep.services.worker.media_process import CPU_LIMIT_ENV, run_media_call
from audioprep.services.worker.pipeline import decode
from audioprep.services.worker.pipeline.analyse import analyse
from tests import media

# ---- functions run in the child (module level: the child imports them by name) ---------------


def pid(on_progress: object = None) -> int:
    return os.getpid()


def fail(on_progress: object = None) -> None:
    raise Permanent("refused", code="unsupported_media")


def burn(seconds: float, on_progress: object = None) -> int:
    """Spend `seconds` of CPU; the child's pid."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return os.getpid()


def sleep(seconds: float, on_progress: object = None) -> int:
    time.sleep(seconds)
    return os.getpid()


def _alive(p: int) -> bool:
    try:
        os.kill(p, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_child_is_reused_only_after_a_clean_result() -> None:
    first = await run_media_call(pid)
    assert await run_media_call(pid) == first
    with pytest.raises(Permanent):
        await run_media_call(fail)
    after_error = await run_media_call(pid)
    assert after_error != first
    assert not _alive(first)  # the child that raised was ended, not left behind

    call = asyncio.create_task(run_media_call(sleep, 30.0))
    await asyncio.sleep(0.5)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    after_cancel = await run_media_call(pid)
    assert after_cancel != after_error  # the cancelled call's child was terminated


async def test_each_call_gets_the_whole_cpu_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CPU_LIMIT_ENV, "1")
    # Three calls of 0.45 s CPU in one child: 1.35 s in all, past a limit that counted the
    # child's lifetime.
    pids = {await run_media_call(burn, 0.45) for _ in range(3)}
    assert len(pids) == 1
    with pytest.raises(Retryable) as err:
        await run_media_call(burn, 5.0)
    assert err.value.code == MEDIA_CRASH and "SIGXCPU" in err.value.message
    assert await run_media_call(burn, 0.1) not in pids


@pytest.mark.parametrize(
    "kw",
    [{}, {"channels": 1}, {"channels": 6}, {"codec": "pcm_s24le"}, {"codec": "pcm_f32le"}],
    ids=["s16-stereo", "mono", "5.1", "s24", "f32"],
)
def test_pcm_wav_small_probe_gives_the_same_analysis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kw: dict[str, object]
) -> None:
    path = str(media.write_tone(tmp_path / "a.wav", seconds=2.5, **kw))  # type: ignore[arg-type]
    assert decode.check_header(path)
    small = analyse(path, points=200)
    monkeypatch.setattr(decode, "PCM_WAV_PROBESIZE", decode.OPEN_OPTIONS["probesize"])
    large = analyse(path, points=200)
    assert (small.info, small.loudness, small.peaks) == (large.info, large.loudness, large.peaks)
    assert np.array_equal(small.voice.frame_db, large.voice.frame_db)
    assert small.info.duration_ms == 2500


def test_other_files_keep_the_large_probe(tmp_path: Path) -> None:
    for name, codec in (("a.flac", None), ("a.mp3", None), ("b.wav", "adpcm_ms")):
        path = media.write_tone(tmp_path / name, seconds=1.0, codec=codec)
        assert not decode.check_header(str(path)), name


async def test_an_idle_child_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(media_process, "IDLE_S", 0.3)
    idle = await run_media_call(pid)
    for _ in range(100):  # until the expiry has ended it (≈ IDLE_S + 1 s)
        if not _alive(idle):
            break
        await asyncio.sleep(0.05)
    assert not _alive(idle)
    assert await run_media_call(pid) != idle
