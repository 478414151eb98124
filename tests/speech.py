"""Speech-like and music-like test material, with the clean reference kept for scoring.

Speech is Debian's `espeak-ng` (installed by `make test`, like Chromium): a formant
synthesiser whose output has the statistics that matter here — a 17-19 dB crest factor
(peak to loudness), syllable-rate envelope, pauses between phrases — which tones hide. Each
sentence is spoken at its own level and pitch so the take has a real loudness range. On top:
- studio: 48 kHz stereo, peaks near full scale (about -17 LUFS, -0.8 dBTP)
- laptop: 44.1 kHz mono, quiet (about -31 LUFS) with a pink-noise floor and 50 Hz hum
- phone: 8 kHz mono, 300-3400 Hz band (about -27 LUFS)
- hires: 96 kHz stereo speech
Music-like material: drum hits (decaying noise bursts), a bass line and chords, stereo.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import butter, resample_poly, sosfilt

from tests import media

Pcm = media.Pcm
ESPEAK_RATE = 22050

SENTENCES = (
    (150, 60, 50, "Welcome back to the show. Today we talk about loudness, and why it matters."),
    (165, 110, 45, "Our guest has produced podcasts for ten years, in studios and in kitchens."),
    (140, 40, 40, "So, what goes wrong first, when people record at home?"),
    (
        170,
        150,
        55,
        "Levels. Everyone records too quietly, then turns it up, and the noise comes too.",
    ),
    (155, 90, 35, "And the second thing is the room itself, the echo, the hum of the fridge."),
)


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def require_espeak() -> None:
    if not have_espeak():
        pytest.skip("espeak-ng is not installed (make test installs it as root on Debian)")


def _espeak(text: str, *, speed: int, amplitude: int, pitch: int, path: Path) -> Pcm:
    subprocess.run(
        [
            "espeak-ng",
            "-w",
            str(path),
            "-s",
            str(speed),
            "-a",
            str(amplitude),
            "-p",
            str(pitch),
            text,
        ],
        check=True,
        capture_output=True,
    )
    pcm, rate = media.decode_pcm(path)
    assert rate == ESPEAK_RATE
    return pcm[:1]


def clean_speech(workdir: Path, *, sentences: int = len(SENTENCES)) -> Pcm:
    """Mono speech at 22.05 kHz: sentences at varied level and pitch, with pauses between."""
    parts: list[Pcm] = []
    for i, (speed, amplitude, pitch, text) in enumerate(SENTENCES[:sentences]):
        take = _espeak(
            text, speed=speed, amplitude=amplitude, pitch=pitch, path=workdir / f"s{i}.wav"
        )
        parts.append(take)
        parts.append(np.zeros((1, int(ESPEAK_RATE * (0.4 + 0.3 * (i % 3)))), dtype=np.float32))
    return np.concatenate(parts, axis=1)


def resample(pcm: Pcm, rate_from: int, rate_to: int) -> Pcm:
    if rate_from == rate_to:
        return pcm
    g = np.gcd(rate_from, rate_to)
    return resample_poly(pcm, rate_to // g, rate_from // g, axis=1).astype(np.float32)


def pink_noise(samples: int, *, rate: int, rms_dbfs: float, seed: int = 7) -> Pcm:
    """1/f noise (spectral shaping of white noise) at a given RMS."""
    rng = np.random.default_rng(seed)
    spectrum = np.fft.rfft(rng.standard_normal(samples))
    freqs = np.fft.rfftfreq(samples, 1 / rate)
    spectrum[1:] /= np.sqrt(freqs[1:])
    spectrum[0] = 0
    pink = np.fft.irfft(spectrum, samples)
    pink *= media.db_to_amp(rms_dbfs) / np.sqrt(np.mean(pink**2))
    return pink[None, :].astype(np.float32)


def hum(samples: int, *, rate: int, freq: float = 50.0, dbfs: float = -45.0) -> Pcm:
    """Mains hum: a fundamental and decaying odd/even harmonics."""
    t = np.arange(samples) / rate
    wave = sum((0.6**k) * np.sin(2 * np.pi * freq * (k + 1) * t + k) for k in range(4))
    wave = wave / np.max(np.abs(wave)) * media.db_to_amp(dbfs)
    return np.asarray(wave, dtype=np.float32)[None, :]


def scale_to_peak(pcm: Pcm, peak_dbfs: float) -> Pcm:
    return (pcm * (media.db_to_amp(peak_dbfs) / float(np.max(np.abs(pcm))))).astype(np.float32)


def music(*, seconds: float, rate: int = 44100, peak_dbfs: float = -1.0) -> Pcm:
    """Music-like stereo: kick/snare hits on a beat, a bass line and chords (transients!)."""
    n = int(seconds * rate)
    t = np.arange(n) / rate
    rng = np.random.default_rng(3)
    out = np.zeros((2, n))
    beat = 0.5
    for k, start in enumerate(np.arange(0, seconds, beat)):
        i = int(start * rate)
        length = min(int(0.25 * rate), n - i)
        env = np.exp(-np.arange(length) / (0.03 * rate))
        if k % 2 == 0:  # kick: a falling sine
            tt = np.arange(length) / rate
            hit = np.sin(2 * np.pi * (50 + 80 * np.exp(-tt * 30)) * tt) * env
            out[:, i : i + length] += hit
        else:  # snare: noise burst
            out[:, i : i + length] += rng.standard_normal((2, length)) * env * 0.5
    roots = (55.0, 73.4, 65.4, 49.0)
    for bar, root in enumerate(roots * int(seconds // 8 + 1)):
        a, b = int(bar * 2 * rate), min(int((bar + 1) * 2 * rate), n)
        if a >= n:
            break
        seg = t[a:b]
        out[:, a:b] += 0.3 * np.sin(2 * np.pi * root * seg)
        for j, ratio in enumerate((4, 5, 6)):
            out[j % 2, a:b] += 0.08 * np.sin(2 * np.pi * root * ratio * seg)
    return scale_to_peak(out.astype(np.float32), peak_dbfs)


@dataclass(frozen=True)
class Material:
    """A test input as written, and the clean speech it was made from (None for music/tone)."""

    name: str
    path: Path
    rate: int
    channels: int
    clean: Pcm | None


def make_material(name: str, workdir: Path) -> Material:
    """Write one named input (studio, laptop, phone, hires, music, music-quiet, tone)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if name == "tone":
        pcm = media.tone(seconds=8.0, freq=997, rate=44100, channels=2, dbfs=-20.0)
        path = media.write_samples(workdir / "tone.wav", pcm, rate=44100)
        return Material(name, path, 44100, 2, None)
    if name in ("music", "music-quiet"):
        rate = 44100 if name == "music" else 96000
        pcm = music(seconds=12.0, rate=rate, peak_dbfs=-0.3 if name == "music" else -18.0)
        path = media.write_samples(workdir / f"{name}.flac", pcm, rate=rate)
        return Material(name, path, rate, 2, None)
    speech = clean_speech(workdir, sentences=3)
    if name == "studio":
        voice = scale_to_peak(resample(speech, ESPEAK_RATE, 48000), -0.8)
        stereo = np.concatenate([voice, voice * 0.98], axis=0)
        path = media.write_samples(workdir / "studio.wav", stereo, rate=48000)
        return Material(name, path, 48000, 2, voice)
    if name == "laptop":
        voice = scale_to_peak(resample(speech, ESPEAK_RATE, 44100), -14.0)
        n = voice.shape[1]
        noisy = voice + pink_noise(n, rate=44100, rms_dbfs=-55.0) + hum(n, rate=44100)
        path = media.write_samples(workdir / "laptop.wav", noisy.astype(np.float32), rate=44100)
        return Material(name, path, 44100, 1, voice)
    if name == "phone":
        narrow = resample(speech, ESPEAK_RATE, 8000)
        band = sosfilt(butter(4, [300, 3400], btype="band", fs=8000, output="sos"), narrow)
        voice = scale_to_peak(np.asarray(band, dtype=np.float32), -9.0)
        path = media.write_samples(workdir / "phone.wav", voice, rate=8000)
        return Material(name, path, 8000, 1, voice)
    if name == "hires":
        voice = scale_to_peak(resample(speech, ESPEAK_RATE, 96000), -3.0)
        stereo = np.concatenate([voice, voice], axis=0)
        path = media.write_samples(workdir / "hires.flac", stereo, rate=96000)
        return Material(name, path, 96000, 2, voice)
    raise ValueError(name)


MATERIALS = ("studio", "laptop", "phone", "hires", "music", "music-quiet", "tone")


@dataclass(frozen=True)
class VoiceMix:
    """A noisy take and the clean reference it was made from (both mono, same rate)."""

    path: Path
    rate: int
    clean: Pcm
    noisy: Pcm
    speech_ranges_s: list[tuple[float, float]]  # where the clean take has speech


def voice_mix(
    workdir: Path,
    *,
    snr_db: float | None = 15.0,
    hum_hz: float | None = None,
    hum_db: float = -40.0,
    level_step_db: float = 0.0,
    rate: int = 48000,
    head_s: float = 2.0,
    pause_s: float = 3.0,
    name: str = "mix",
) -> VoiceMix:
    """2 s of room tone, speaker A (two sentences), a 3 s pause, speaker B (two sentences,
    `level_step_db` quieter), 2 s of room tone; pink noise at `snr_db` under the speech
    level, mains hum with harmonics. Mono, 48 kHz by default."""
    workdir.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, (speed, _amplitude, pitch, text) in enumerate(SENTENCES[:4]):
        take = _espeak(text, speed=speed, amplitude=100, pitch=pitch, path=workdir / f"v{i}.wav")
        parts.append(resample(take, ESPEAK_RATE, rate))
    a = np.concatenate([parts[0], np.zeros((1, int(0.5 * rate)), np.float32), parts[1]], axis=1)
    b = np.concatenate([parts[2], np.zeros((1, int(0.5 * rate)), np.float32), parts[3]], axis=1)
    b = b * np.float32(media.db_to_amp(-level_step_db))
    head = np.zeros((1, int(head_s * rate)), np.float32)
    gap = np.zeros((1, int(pause_s * rate)), np.float32)
    clean = np.concatenate([head, a, gap, b, head], axis=1)
    clean = scale_to_peak(clean, -3.0)
    t0 = head_s
    ranges = [(t0, t0 + a.shape[1] / rate)]
    t1 = ranges[0][1] + pause_s
    ranges.append((t1, t1 + b.shape[1] / rate))
    noisy = clean.copy()
    n = clean.shape[1]
    if snr_db is not None:
        active = np.abs(clean[0]) > 1e-4
        speech_rms = float(np.sqrt(np.mean(clean[0][active] ** 2)))
        noise_db = 20 * np.log10(speech_rms) - snr_db
        noisy = noisy + pink_noise(n, rate=rate, rms_dbfs=noise_db)
    if hum_hz is not None:
        noisy = noisy + hum(n, rate=rate, freq=hum_hz, dbfs=hum_db)
    path = media.write_samples(workdir / f"{name}.wav", noisy.astype(np.float32), rate=rate)
    return VoiceMix(path, rate, clean, noisy.astype(np.float32), ranges)
