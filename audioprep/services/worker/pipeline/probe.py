"""What a source is (duration, rate, channels, codec) before anyone spends time decoding it all."""

from __future__ import annotations

from dataclasses import dataclass

import av.container
from av.audio.stream import AudioStream

from audioprep.services.worker.pipeline.decode import decode_frames, open_audio

# Containers whose header duration is an estimate (bitrate × size) rather than a sample count.
_UNRELIABLE_DURATION = frozenset(
    {"mp3", "aac", "ac3", "eac3", "mpeg", "mpegts", "loas", "matroska,webm"}
)
# Frames decoded to prove a source is not truncated to nothing.
_VERIFY_FRAMES = 4


@dataclass(frozen=True, slots=True)
class MediaInfo:
    """Facts about a source that the API shows and the renderer needs."""

    duration_ms: int
    sample_rate: int
    channels: int
    codec: str
    container: str
    bit_rate: int | None
    title: str | None


def header_duration_ms(container: av.container.InputContainer, stream: AudioStream) -> int | None:
    """Duration the container claims, from the stream first, then the container."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return round(float(stream.duration * stream.time_base) * 1000)
    if container.duration is not None and container.duration > 0:
        return round(container.duration / 1000)
    return None


def _title(container: av.container.InputContainer, stream: AudioStream) -> str | None:
    """The title tag, wherever the container keeps it (ogg puts tags on the stream)."""
    for meta in (container.metadata, stream.metadata):
        for key, value in meta.items():
            if key.lower() == "title" and value.strip():
                return value.strip()
    return None


def _container_name(container: av.container.InputContainer) -> str:
    """Short container name ('mov,mp4,m4a,...' becomes 'mp4')."""
    name = container.format.name
    return {"mov,mp4,m4a,3gp,3g2,mj2": "mp4", "matroska,webm": "matroska"}.get(name, name)


def media_info(
    container: av.container.InputContainer, stream: AudioStream, duration_ms: int
) -> MediaInfo:
    """Assemble MediaInfo from an open source and a known duration."""
    cc = stream.codec_context
    bit_rate = cc.bit_rate or container.bit_rate or None
    return MediaInfo(
        duration_ms=duration_ms,
        sample_rate=cc.sample_rate,
        channels=cc.channels,
        codec=cc.codec.canonical_name,
        container=_container_name(container),
        bit_rate=bit_rate,
        title=_title(container, stream),
    )


def needs_decode_count(container: av.container.InputContainer, stream: AudioStream) -> bool:
    """True when only counting decoded samples gives a duration within a few ms."""
    return (
        container.format.name in _UNRELIABLE_DURATION
        or header_duration_ms(container, stream) is None
    )


def probe(path: str) -> MediaInfo:
    """Describe a source; raises Permanent (empty_file, no_audio_stream, ...) for bad input."""
    with open_audio(path) as (container, stream):
        if needs_decode_count(container, stream):
            samples = sum(f.samples for f in decode_frames(container, stream))
            duration_ms = round(samples * 1000 / stream.codec_context.sample_rate)
        else:
            header_ms = header_duration_ms(container, stream)
            assert header_ms is not None
            duration_ms = header_ms
            for i, _ in enumerate(decode_frames(container, stream)):
                if i + 1 >= _VERIFY_FRAMES:
                    break
        return media_info(container, stream, duration_ms)
