"""Our RNNoise build (vendored upstream source, the wheel's model as a weights blob) against
the pyrnnoise wheel's library, on the same espeak speech frames; and the fallback."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from pesq import pesq
from pystoi import stoi
from scipy.signal import resample_poly

from audioprep.services.worker.pipeline import rnnoise_lib
from audioprep.services.worker.pipeline.rnnoise_lib import FRAME, Rnnoise
from tests import speech

needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (make test: gcc)")


@pytest.fixture(scope="module")
def mix(tmp_path_factory: pytest.TempPathFactory) -> speech.VoiceMix:
    speech.require_espeak()
    return speech.voice_mix(tmp_path_factory.mktemp("rnnoise"), snr_db=15, hum_hz=50, name="m")


def _run(rnnoise: Rnnoise, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whole-file denoise in blocks of 37 frames (the stage calls it block by block)."""
    state = rnnoise.create()
    out = np.empty_like(x)
    vad = np.empty(x.shape[0] // FRAME, dtype=np.float32)
    step = 37 * FRAME
    for i in range(0, x.shape[0], step):
        j = i // FRAME
        n = min(step, x.shape[0] - i) // FRAME
        rnnoise.frames(state, x[i : i + step], out[i : i + step], vad[j : j + n])
    rnnoise.destroy(state)
    return out, vad


def _scores(clean: np.ndarray, out: np.ndarray, delay: int = 960) -> tuple[float, float]:
    """PESQ (wide band) and STOI of `out` (RNNoise lags by two frames) against `clean`."""
    ref = resample_poly(clean[: out.shape[0] - delay], 1, 3)
    deg = resample_poly(out[delay:], 1, 3)
    return float(pesq(16000, ref, deg, "wb")), float(stoi(ref, deg, 16000))


@needs_cc
def test_built_library_matches_the_wheel(mix: speech.VoiceMix) -> None:
    n = 12 * 48000  # room tone and the first speaker: 1200 frames
    x = np.ascontiguousarray(mix.noisy[0, :n], dtype=np.float32)
    wheel_out, wheel_vad = _run(rnnoise_lib.wheel(), x)

    # the wheel's float weights through our SIMD build: the same network, float tolerance
    # (SIMD tanh/sigmoid approximations and FMA ordering; a wrong weight would be far off)
    float_out, float_vad = _run(rnnoise_lib.built(float_weights=True), x)
    assert np.abs(float_out - wheel_out).max() < 2e-3
    assert np.abs(float_vad - wheel_vad).max() < 0.02

    # what the chain runs: int8 weights (upstream's default build)
    ours = rnnoise_lib.load()
    assert ours.kind == "built"
    out, vad = _run(ours, x)
    err_db = 10 * np.log10(np.mean((out - wheel_out) ** 2) / np.mean(wheel_out**2))
    assert err_db < -40, err_db
    assert np.abs(vad - wheel_vad).max() < 0.15
    clean = mix.clean[0, :n]
    wheel_pesq, wheel_stoi = _scores(clean, wheel_out)
    our_pesq, our_stoi = _scores(clean, out)
    assert abs(our_pesq - wheel_pesq) <= 0.05, (our_pesq, wheel_pesq)
    assert abs(our_stoi - wheel_stoi) <= 0.005, (our_stoi, wheel_stoi)
    assert our_pesq > _scores(clean, x, delay=0)[0] + 0.3  # and it does denoise


def test_no_compiler_falls_back_to_the_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing cached there
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with caplog.at_level(logging.WARNING, logger="audioprep.worker.rnnoise"):
        chosen = rnnoise_lib.choose()
    assert chosen.kind == "wheel"
    [record] = [r for r in caplog.records if r.name == "audioprep.worker.rnnoise"]
    assert "no-such-cc" in record.__dict__["error"]
    x = np.zeros(4 * FRAME, dtype=np.float32)
    out, _ = _run(chosen, x)
    assert out.shape == x.shape and not out.any()


@needs_cc
def test_a_failed_build_is_an_error_with_the_compiler_message(tmp_path: Path) -> None:
    source = tmp_path / "rnnoise"
    shutil.copytree(rnnoise_lib.SOURCE_DIR, source)
    (source / "src" / "denoise.c").write_text("this is not C\n")
    cache = tmp_path / "cache"
    (cache / "build-killed").mkdir(parents=True)  # what a builder killed mid-way leaves
    with pytest.raises(RuntimeError, match="denoise"):
        rnnoise_lib.build(source, cache=cache)
    assert [p.name for p in cache.iterdir()] == [".rnnoise.lock"]  # nothing half-built left
