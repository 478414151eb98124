"""Opening and decoding sources, with every libav failure mapped to a stable error code."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction

import av
import av.container
from av.audio.frame import AudioFrame
from av.audio.stream import AudioStream

from shared.errors import (
    CORRUPT_MEDIA,
    EMPTY_FILE,
    NO_AUDIO_STREAM,
    UNSUPPORTED_MEDIA,
    Cancelled,
    Permanent,
)

# Leading bytes of containers we accept; a file that starts like one but won't open is corrupt.
_MAGIC: tuple[tuple[int, bytes], ...] = (
    (0, b"RIFF"),
    (0, b"RF64"),
    (0, b"fLaC"),
    (0, b"ID3"),
    (0, b"OggS"),
    (4, b"ftyp"),
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM
    (0, b"FORM"),  # AIFF
    (0, b"caff"),
)
# Demuxers that "succeed" on arbitrary bytes by rendering them as text art.
_TEXT_FORMATS = frozenset({"bin", "tty", "ansi", "xbin", "idf", "adp"})
# Raw elementary video streams have no container signature: their demuxers also "find" a
# video stream in random bytes, so a video-only verdict from them means "not media".
_RAW_VIDEO_FORMATS = frozenset(
    {"h261", "h263", "h264", "hevc", "m4v", "mjpeg", "mpegvideo", "cavsvideo", "vc1", "dirac"}
)
# Undecodable packets tolerated (skipped, as the ffmpeg CLI does) before giving up.
MAX_DECODE_ERRORS = 50
CHECK_EVERY_FRAMES = 64


def _looks_like_media(path: str) -> bool:
    """True when the file starts with a known container signature or an MPEG audio sync."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if any(head[off : off + len(sig)] == sig for off, sig in _MAGIC):
        return True
    return len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0


def open_input(path: str) -> av.container.InputContainer:
    """Open a source for reading; empty, non-media and unreadable files become Permanent."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise Permanent("source file is missing", code=CORRUPT_MEDIA) from None
    if size == 0:
        raise Permanent("the file is empty", code=EMPTY_FILE)
    try:
        return av.open(path, "r", options={"probesize": "5000000"})
    except (av.InvalidDataError, av.EOFError) as exc:
        if _looks_like_media(path):
            raise Permanent("the file is damaged or truncated", code=CORRUPT_MEDIA) from exc
        raise Permanent("not an audio or video file we can read", code=UNSUPPORTED_MEDIA) from exc
    except av.FFmpegError as exc:
        raise Permanent(f"cannot open media: {exc}", code=UNSUPPORTED_MEDIA) from exc


def audio_stream(container: av.container.InputContainer) -> AudioStream:
    """The best audio stream; a video-only file is `no_audio_stream`."""
    streams = container.streams.audio
    if not streams:
        fmt = container.format.name
        if container.streams.video and fmt not in _TEXT_FORMATS | _RAW_VIDEO_FORMATS:
            raise Permanent("the file has video but no audio track", code=NO_AUDIO_STREAM)
        raise Permanent("the file has no audio track", code=UNSUPPORTED_MEDIA)
    best = max(streams, key=lambda s: (s.codec_context.channels > 0, s.codec_context.sample_rate))
    if best.codec_context.sample_rate <= 0:
        raise Permanent("the audio track cannot be decoded", code=UNSUPPORTED_MEDIA)
    return best


@contextmanager
def open_audio(path: str) -> Iterator[tuple[av.container.InputContainer, AudioStream]]:
    """Open `path` and pick its audio stream; closes the container afterwards."""
    container = open_input(path)
    try:
        stream = audio_stream(container)
        stream.codec_context.thread_type = "AUTO"
        yield container, stream
    finally:
        container.close()


def decode_frames(
    container: av.container.InputContainer,
    stream: AudioStream,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[AudioFrame]:
    """Yield decoded frames; skip isolated bad packets, fail if nothing decodes."""
    decoded = 0
    errors = 0
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
            frames = packet.decode()
        except StopIteration:
            break
        except av.FFmpegError as exc:
            errors += 1
            if errors > MAX_DECODE_ERRORS:
                raise Permanent(f"decoding failed: {exc}", code=CORRUPT_MEDIA) from exc
            continue
        for frame in frames:
            if not isinstance(frame, AudioFrame):
                continue
            decoded += 1
            if should_stop is not None and decoded % CHECK_EVERY_FRAMES == 0 and should_stop():
                raise Cancelled("stopped on request")
            yield frame
    if decoded == 0:
        raise Permanent("no audio could be decoded", code=CORRUPT_MEDIA)


def normal_layout(stream: AudioStream) -> str:
    """Layout name the filters accept: 'N channels' (no mask) becomes mono/stereo/default."""
    name = stream.layout.name
    channels = stream.codec_context.channels
    if name.endswith("channels") or name.startswith("unknown"):
        return {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 8: "7.1"}.get(
            channels, name
        )
    return name


def stream_time_base(stream: AudioStream) -> Fraction:
    """The stream's time base, falling back to 1/sample_rate."""
    return stream.time_base or Fraction(1, stream.codec_context.sample_rate)
