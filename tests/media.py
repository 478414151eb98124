"""Test media made on the fly with PyAV, and measurements of what the code under test wrote.

Writers take a path whose extension picks container and codec (override with `codec=`):
.wav (pcm_s16le; also pcm_s24le, pcm_f32le), .flac, .mp3, .ogg (vorbis), .opus (opus in ogg),
.m4a (aac), .mp4 / .mkv (aac + a small video track with `video=True`), .aac (raw ADTS).
Measurers decode with plain PyAV so they do not share code with the pipeline under test.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt

Pcm = npt.NDArray[np.float32]

# extension -> (container format, default codec)
CONTAINERS: dict[str, tuple[str, str]] = {
    ".wav": ("wav", "pcm_s16le"),
    ".flac": ("flac", "flac"),
    ".mp3": ("mp3", "libmp3lame"),
    ".ogg": ("ogg", "vorbis"),
    ".opus": ("ogg", "libopus"),
    ".m4a": ("ipod", "aac"),
    ".aac": ("adts", "aac"),
    ".mp4": ("mp4", "aac"),
    ".mkv": ("matroska", "aac"),
    ".webm": ("webm", "libopus"),
}
_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}


def db_to_amp(db: float) -> float:
    """Linear amplitude of a dBFS value."""
    return float(10.0 ** (db / 20.0))


def tone(
    *,
    seconds: float,
    freq: float = 440.0,
    rate: int = 44100,
    channels: int = 2,
    dbfs: float = -20.0,
) -> Pcm:
    """A sine of peak `dbfs`, identical on every channel, shape (channels, samples)."""
    t = np.arange(round(seconds * rate), dtype=np.float64) / rate
    one = (db_to_amp(dbfs) * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(one[None, :], channels, axis=0)


def noise(*, seconds: float, rate: int = 44100, channels: int = 2, dbfs: float = -20.0) -> Pcm:
    """Uniform white noise of peak `dbfs`, seeded so runs repeat."""
    rng = np.random.default_rng(1234)
    n = round(seconds * rate)
    return (db_to_amp(dbfs) * rng.uniform(-1, 1, (channels, n))).astype(np.float32)


def silence(*, seconds: float, rate: int = 44100, channels: int = 2) -> Pcm:
    """Digital silence."""
    return np.zeros((channels, round(seconds * rate)), dtype=np.float32)


def write_samples(
    path: str | Path,
    samples: Pcm,
    *,
    rate: int = 44100,
    codec: str | None = None,
    container: str | None = None,
    layout: str | None = None,
    title: str | None = None,
    video: bool = False,
    bitrate: int | None = None,
) -> Path:
    """Encode float samples (channels, n) to `path`; layout None = mono/stereo/5.1 by count."""
    path = Path(path)
    fmt, default_codec = CONTAINERS[path.suffix.lower()]
    codec = codec or default_codec
    channels = samples.shape[0]
    layout = layout or _LAYOUTS.get(channels, f"{channels} channels")
    with av.open(str(path), "w", format=container or fmt) as out:
        if title is not None:
            out.metadata["title"] = title
        vstream = None
        if video:
            vstream = out.add_stream("mpeg4", rate=10)
            vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
        st: Any = out.add_stream(codec, rate=rate, layout=layout)
        if codec == "vorbis":
            st.codec_context.options = {"strict": "experimental"}  # native encoder
        if bitrate:
            st.bit_rate = bitrate
        sample_fmt = _pick_format(codec)
        st.format = sample_fmt
        st.codec_context.open()
        frame_size = st.codec_context.frame_size or 1024
        graph = av.filter.Graph()
        src = graph.add_abuffer(
            sample_rate=rate, format="fltp", layout=layout, time_base=Fraction(1, rate)
        )
        conv = graph.add("aformat", f"sample_fmts={sample_fmt}:channel_layouts={layout}")
        sink = graph.add("abuffersink")
        src.link_to(conv)
        conv.link_to(sink)
        graph.configure()
        graph.set_audio_frame_size(frame_size)
        total = samples.shape[1]
        vpts = 0
        for pos in [*range(0, total, 4096), None]:
            if pos is None:
                graph.push(None)
            else:
                chunk = np.ascontiguousarray(samples[:, pos : pos + 4096], dtype=np.float32)
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
                frame.sample_rate = rate
                frame.pts = pos
                frame.time_base = Fraction(1, rate)
                graph.push(frame)
            while True:
                try:
                    out_frame = graph.pull()
                except (av.BlockingIOError, av.EOFError):
                    break
                for packet in st.encode(out_frame):
                    out.mux(packet)
            done = total if pos is None else pos
            while vstream is not None and vpts * rate < done * 10:
                vframe = av.VideoFrame(64, 48, "yuv420p")
                vframe.pts = vpts
                for packet in vstream.encode(vframe):
                    out.mux(packet)
                vpts += 1
        for packet in st.encode(None):
            out.mux(packet)
        if vstream is not None:
            for packet in vstream.encode(None):
                out.mux(packet)
    return path


def _pick_format(codec: str) -> str:
    """First sample format the encoder supports, preferring float."""
    formats = [f.name for f in av.Codec(codec, "w").audio_formats or []]
    for want in ("fltp", "flt", "s32", "s16", "s16p", "s32p"):
        if want in formats:
            return want
    return formats[0]


def write_tone(
    path: str | Path,
    *,
    seconds: float = 3.0,
    freq: float = 440.0,
    rate: int = 44100,
    channels: int = 2,
    amplitude_dbfs: float = -20.0,
    codec: str | None = None,
    lead_silence_s: float = 0.0,
    tail_silence_s: float = 0.0,
    title: str | None = None,
    video: bool = False,
    layout: str | None = None,
) -> Path:
    """Write a sine (optionally wrapped in digital silence) to `path`."""
    parts = [silence(seconds=lead_silence_s, rate=rate, channels=channels)]
    parts.append(
        tone(seconds=seconds, freq=freq, rate=rate, channels=channels, dbfs=amplitude_dbfs)
    )
    parts.append(silence(seconds=tail_silence_s, rate=rate, channels=channels))
    pcm = np.concatenate(parts, axis=1)
    return write_samples(path, pcm, rate=rate, codec=codec, title=title, video=video, layout=layout)


def write_noise(
    path: str | Path,
    *,
    seconds: float = 3.0,
    rate: int = 44100,
    channels: int = 2,
    amplitude_dbfs: float = -20.0,
    codec: str | None = None,
) -> Path:
    """Write white noise to `path`."""
    pcm = noise(seconds=seconds, rate=rate, channels=channels, dbfs=amplitude_dbfs)
    return write_samples(path, pcm, rate=rate, codec=codec)


def write_silence(
    path: str | Path, *, seconds: float = 3.0, rate: int = 44100, channels: int = 2
) -> Path:
    """Write digital silence to `path`."""
    return write_samples(path, silence(seconds=seconds, rate=rate, channels=channels), rate=rate)


def write_video_only(path: str | Path, *, seconds: float = 1.0) -> Path:
    """A small mpeg4 video with no audio track (.mp4 or .mkv)."""
    path = Path(path)
    fmt = CONTAINERS[path.suffix.lower()][0]
    with av.open(str(path), "w", format=fmt) as out:
        st: Any = out.add_stream("mpeg4", rate=10)
        st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
        for i in range(round(seconds * 10)):
            frame = av.VideoFrame(64, 48, "yuv420p")
            frame.pts = i
            for packet in st.encode(frame):
                out.mux(packet)
        for packet in st.encode(None):
            out.mux(packet)
    return path


def truncate(src: str | Path, dst: str | Path, *, keep_bytes: int) -> Path:
    """Copy only the first `keep_bytes` of `src` (a corrupt/partial file)."""
    data = Path(src).read_bytes()[:keep_bytes]
    Path(dst).write_bytes(data)
    return Path(dst)


# ---- measuring ---------------------------------------------------------------------------


def decode_pcm(path: str | Path) -> tuple[Pcm, int]:
    """Decode the first audio stream to float32 (channels, samples) and its sample rate."""
    with av.open(str(path)) as inp:
        stream = inp.streams.audio[0]
        resampler = av.AudioResampler(format="fltp")
        chunks: list[Pcm] = []
        rate = stream.codec_context.sample_rate
        for frame in inp.decode(stream):
            rate = frame.sample_rate
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().astype(np.float32))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().astype(np.float32))
    if not chunks:
        return np.zeros((stream.codec_context.channels, 0), dtype=np.float32), rate
    return np.concatenate(chunks, axis=1), rate


def measure_duration_s(path: str | Path) -> float:
    """Duration by counting decoded samples (what a listener gets).

    MP4/M4A: capped at the stream's declared length, because AAC decodes whole 1024-sample
    frames and players honour the edit list that cuts the last frame's padding.
    """
    pcm, rate = decode_pcm(path)
    seconds = float(pcm.shape[1] / rate)
    with av.open(str(path)) as inp:
        stream = inp.streams.audio[0]
        if inp.format.name.startswith("mov") and stream.duration and stream.time_base:
            seconds = min(seconds, float(stream.duration * stream.time_base))
    return seconds


def stream_info(path: str | Path) -> tuple[str, int, int]:
    """(codec name, sample rate, channels) of the first audio stream."""
    with av.open(str(path)) as inp:
        cc = inp.streams.audio[0].codec_context
        return cc.name, cc.sample_rate, cc.channels


def container_title(path: str | Path) -> str | None:
    """The title tag, from the container or the audio stream (ogg keeps it there)."""
    with av.open(str(path)) as inp:
        meta = dict(inp.metadata)
        meta.update(inp.streams.audio[0].metadata)
    for key, value in meta.items():
        if key.lower() == "title":
            return str(value)
    return None


def rms_db(pcm: Pcm) -> float:
    """RMS level in dBFS over all channels (-inf for silence)."""
    if pcm.size == 0:
        return -math.inf
    value = float(np.sqrt(np.mean(np.square(pcm.astype(np.float64)))))
    return 20 * math.log10(value) if value > 0 else -math.inf


def rms_between(pcm: Pcm, rate: int, start_s: float, end_s: float) -> float:
    """RMS in dBFS of a time window; negative times count from the end."""
    n = pcm.shape[1]
    a = round(start_s * rate) if start_s >= 0 else n + round(start_s * rate)
    b = round(end_s * rate) if end_s > 0 else n + round(end_s * rate)
    return rms_db(pcm[:, max(a, 0) : min(b, n)])


def first_sound_s(pcm: Pcm, rate: int, *, threshold_dbfs: float = -50.0) -> float:
    """Time of the first sample above the threshold."""
    loud = np.nonzero(np.max(np.abs(pcm), axis=0) > db_to_amp(threshold_dbfs))[0]
    return float(loud[0]) / rate if loud.size else math.inf


def dominant_frequency(pcm: Pcm, rate: int) -> float:
    """Strongest frequency of the first channel (Hann-windowed FFT, parabolic refinement)."""
    x = pcm[0].astype(np.float64)
    x = x * np.hanning(x.size)
    spectrum = np.abs(np.fft.rfft(x))
    k = int(np.argmax(spectrum[1:])) + 1
    if 0 < k < spectrum.size - 1:
        a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
        k_f = k + 0.5 * (a - c) / (a - 2 * b + c)
    else:
        k_f = float(k)
    return float(k_f * rate / x.size)


def _ebur128(path: str | Path) -> dict[str, float]:
    """Run ffmpeg's ebur128 over the whole file; return I, LRA and true peak (dBTP)."""
    with av.open(str(path)) as inp:
        stream = inp.streams.audio[0]
        graph = av.filter.Graph()
        src = graph.add_abuffer(template=stream)
        meter = graph.add("ebur128", "metadata=1:peak=true")
        sink = graph.add("abuffersink")
        src.link_to(meter)
        meter.link_to(sink)
        graph.configure()
        last: dict[str, str] = {}

        def drain() -> None:
            while True:
                try:
                    frame = graph.pull()
                except (av.BlockingIOError, av.EOFError):
                    return
                if frame.metadata:
                    last.update(frame.metadata)

        for frame in inp.decode(stream):
            graph.push(frame)
            drain()
        graph.push(None)
        drain()
    peaks = [float(v) for k, v in last.items() if k.startswith("lavfi.r128.true_peaks")]
    peak = max(peaks) if peaks else 0.0
    return {
        "I": float(last.get("lavfi.r128.I", "-70")),
        "LRA": float(last.get("lavfi.r128.LRA", "0")),
        "TP": 20 * math.log10(peak) if peak > 0 else -math.inf,
    }


def integrated_lufs(path: str | Path) -> float:
    """Integrated loudness (LUFS) by ffmpeg's ebur128 filter."""
    return _ebur128(path)["I"]


def true_peak_db(path: str | Path) -> float:
    """Maximum true peak over channels in dBTP."""
    return _ebur128(path)["TP"]


def sine_lufs(amplitude_dbfs: float, channels: int = 2) -> float:
    """Theoretical integrated loudness of a 997 Hz sine of peak `amplitude_dbfs` per channel.

    BS.1770: L = -0.691 + 10·log10(Σ mean-square of K-weighted channels); the K filter adds
    +0.691 dB at 997 Hz and a sine's mean square is a²/2, so a stereo sine reads its peak dBFS.
    """
    a = db_to_amp(amplitude_dbfs)
    return -0.691 + 0.691 + 10 * math.log10(channels * a * a / 2)


def junk_bytes(size: int, seed: int = 20261125) -> bytes:
    """Deterministic non-media bytes (seeded; a leading zero avoids an MPEG sync word)."""
    import random

    return b"\x00" + random.Random(seed).randbytes(size - 1)
