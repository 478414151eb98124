"""Opening and decoding sources, with every libav failure mapped to a stable error code."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from typing import BinaryIO

import av
import av.container
from av.audio.frame import AudioFrame
from av.audio.stream import AudioStream

from audioprep.domain.errors import (
    CORRUPT_MEDIA,
    EMPTY_FILE,
    NO_AUDIO_STREAM,
    TOO_LONG,
    UNSUPPORTED_MEDIA,
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
# Plausibility caps, checked on the raw header (WAV fmt chunk, FLAC STREAMINFO, AIFF COMM)
# before FFmpeg sees the file, again on the opened stream, and on every decoded frame: FFmpeg
# crashes (SIGSEGV) on some absurd parameters (655,350 Hz x 8 channels, 65,535 channels).
# 384 kHz is the highest rate converters ship (DXD/"PCM 384"); 32 channels covers 22.2 and
# 3rd-order ambisonics; the product caps the decoded sample rate of all channels together.
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 32
MAX_SAMPLES_PER_S = 3_072_000  # e.g. 384 kHz x 8, 96 kHz x 32
# FLAC's best case: a frame of 65,535 samples per channel stored as constant subframes takes
# at least ~10 bytes, so no real FLAC holds more than this many samples per channel per byte.
FLAC_MAX_SAMPLES_PER_BYTE = 8192
# Only these demuxers may open a source: no playlists (hls, concat, dash), no image or text
# demuxers, nothing that opens further URLs. Names as FFmpeg's format whitelist matches them.
ALLOWED_DEMUXERS = (
    "wav,w64,flac,mp3,ogg,mov,mp4,matroska,webm,aiff,caf,aac,ac3,eac3,loas,mpegts,mpeg,"
    "avi,asf,amr,au,wv,ape,dts,truehd,tta,mpc,mpc8,dsf,voc"
)
OPEN_OPTIONS = {
    "probesize": "5000000",
    "protocol_whitelist": "file",
    "format_whitelist": ALLOWED_DEMUXERS,
}
# A PCM WAV's fmt chunk says everything FFmpeg's stream probing looks for, yet with the probe
# size above it reads ~0.5 MB of samples first: 17 ms of a 3-s WAV's 41-ms analysis. Such a
# file opens with this probe size instead (same stream parameters and duration); other
# containers open in under 0.5 ms either way and keep the large one.
PCM_WAV_PROBESIZE = "32768"
_WAV_PCM_TAGS = frozenset({0x0001, 0x0003})  # WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT
_WAV_EXTENSIBLE = 0xFFFE
# KSDATAFORMAT_SUBTYPE_PCM / _IEEE_FLOAT: the extensible format's GUID after its 2-byte tag
_WAV_PCM_SUBTYPE_TAIL = bytes.fromhex("000000001000800000aa00389b71")
# Undecodable packets tolerated (skipped, as the ffmpeg CLI does) before giving up.
MAX_DECODE_ERRORS = 50


def _looks_like_media(path: str) -> bool:
    """True when the file starts with a known container signature or an MPEG audio sync."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if any(head[off : off + len(sig)] == sig for off, sig in _MAGIC):
        return True
    return len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0


def check_parameters(rate: int, channels: int, what: str = "the audio") -> None:
    """Refuse sample rates and channel counts no real recording has (Permanent)."""
    if not 0 < rate <= MAX_SAMPLE_RATE:
        raise Permanent(
            f"{what} claims {rate} Hz; supported is 1 to {MAX_SAMPLE_RATE} Hz",
            code=UNSUPPORTED_MEDIA,
        )
    if not 0 < channels <= MAX_CHANNELS:
        raise Permanent(
            f"{what} claims {channels} channels; supported is 1 to {MAX_CHANNELS}",
            code=UNSUPPORTED_MEDIA,
        )
    if rate * channels > MAX_SAMPLES_PER_S:
        raise Permanent(
            f"{what} claims {rate} Hz x {channels} channels; at most {MAX_SAMPLES_PER_S} "
            "samples per second are supported",
            code=UNSUPPORTED_MEDIA,
        )


def _skip_id3(head: bytes) -> int:
    """Offset past a leading ID3v2 tag (FLAC files sometimes carry one), else 0."""
    if len(head) >= 10 and head[:3] == b"ID3":
        size = 0
        for b in head[6:10]:
            size = (size << 7) | (b & 0x7F)
        return 10 + size + (10 if head[5] & 0x10 else 0)
    return 0


def _check_wav(fh: BinaryIO) -> bool:
    """Walk RIFF/RF64/BW64 chunks to `fmt ` and check what it claims; True when it describes
    plain PCM or float samples (nothing left for FFmpeg to probe)."""
    fh.seek(12)
    for _ in range(64):  # a fmt chunk comes first in practice; don't walk forever
        hdr = fh.read(8)
        if len(hdr) < 8:
            return False
        cid, size = hdr[:4], struct.unpack("<I", hdr[4:])[0]
        if cid == b"fmt ":
            fmt = fh.read(min(size, 40))
            if len(fmt) < 16:
                return False  # truncated: FFmpeg says corrupt
            tag, channels, rate, _byte_rate, _align, _bits = struct.unpack("<HHIIHH", fmt[:16])
            check_parameters(rate, channels, "the WAV header")
            if tag == _WAV_EXTENSIBLE:
                return (
                    len(fmt) >= 40
                    and fmt[26:40] == _WAV_PCM_SUBTYPE_TAIL
                    and (int.from_bytes(fmt[24:26], "little") in _WAV_PCM_TAGS)
                )
            return tag in _WAV_PCM_TAGS
        fh.seek(size + (size & 1), os.SEEK_CUR)
    return False


def _check_flac(fh: BinaryIO, start: int, file_size: int) -> None:
    """Check STREAMINFO (the first metadata block): rate, channels, and a total sample count
    the file could physically hold."""
    fh.seek(start + 4)
    block = fh.read(4 + 34)
    if len(block) < 38 or block[0] & 0x7F != 0:
        return  # no STREAMINFO first: FFmpeg refuses or copes
    info = block[4:]
    packed = int.from_bytes(info[10:18], "big")
    rate = packed >> 44
    channels = ((packed >> 41) & 0x7) + 1
    total = packed & ((1 << 36) - 1)
    check_parameters(rate, channels, "the FLAC header")
    if total > FLAC_MAX_SAMPLES_PER_BYTE * max(file_size, 1):
        raise Permanent(
            f"the FLAC header claims {total / rate:.0f} s of audio, more than "
            f"{file_size} bytes can hold",
            code=UNSUPPORTED_MEDIA,
        )


def _extended_to_int(raw: bytes) -> int:
    """An AIFF 80-bit extended float (the sample rate), as an int; 0 for nonsense."""
    exp = int.from_bytes(raw[:2], "big") & 0x7FFF
    mantissa = int.from_bytes(raw[2:10], "big")
    shift = exp - 16383 - 63
    if mantissa == 0 or exp == 0 or shift > 64:
        return 0 if mantissa == 0 or exp == 0 else 1 << 62
    return mantissa << shift if shift >= 0 else mantissa >> -shift


def _check_aiff(fh: BinaryIO) -> None:
    fh.seek(12)
    for _ in range(64):
        hdr = fh.read(8)
        if len(hdr) < 8:
            return
        cid, size = hdr[:4], struct.unpack(">I", hdr[4:])[0]
        if cid == b"COMM":
            comm = fh.read(18)
            if len(comm) < 18:
                return
            channels = struct.unpack(">h", comm[:2])[0]
            check_parameters(_extended_to_int(comm[8:18]), channels, "the AIFF header")
            return
        fh.seek(size + (size & 1), os.SEEK_CUR)


def check_header(path: str) -> bool:
    """Parse the WAV/AIFF/FLAC header ourselves and refuse implausible parameters before any
    FFmpeg code touches the file. True for a PCM WAV (see PCM_WAV_PROBESIZE)."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(4096)
        if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
            return _check_wav(fh)
        if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
            _check_aiff(fh)
        else:
            start = _skip_id3(head)
            fh.seek(start)
            if fh.read(4) == b"fLaC":
                _check_flac(fh, start, size)
    return False


def open_input(path: str) -> av.container.InputContainer:
    """Open a source for reading; empty, non-media and unreadable files become Permanent.

    Only local files (`protocol_whitelist=file`) and the demuxers in ALLOWED_DEMUXERS: a
    playlist (HLS, ffconcat) named .wav is refused, and nothing is ever fetched."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise Permanent("source file is missing", code=CORRUPT_MEDIA) from None
    if size == 0:
        raise Permanent("the file is empty", code=EMPTY_FILE)
    options = dict(OPEN_OPTIONS)
    if check_header(path):
        options["probesize"] = PCM_WAV_PROBESIZE
    try:
        return av.open(path, "r", options=options)
    except (av.InvalidDataError, av.EOFError) as exc:
        if _looks_like_media(path):
            raise Permanent("the file is damaged or truncated", code=CORRUPT_MEDIA) from exc
        raise Permanent("not an audio or video file we can read", code=UNSUPPORTED_MEDIA) from exc
    except av.FFmpegError as exc:
        raise Permanent(f"cannot open media: {exc}", code=UNSUPPORTED_MEDIA) from exc
    except (ValueError, OverflowError, MemoryError) as exc:  # PyAV on absurd stream params
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
    check_parameters(best.codec_context.sample_rate, best.codec_context.channels, "the stream")
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
    max_duration_s: float | None = None,
) -> Iterator[AudioFrame]:
    """Yield decoded frames; skip isolated bad packets, fail if nothing decodes.

    Every frame's rate and channels are checked against the caps (a stream may change them
    midway), and decoding stops with `too_long` once more than `max_duration_s` came out."""
    decoded = 0
    seconds = 0.0
    last_params = (0, 0)
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
            params = (frame.sample_rate, len(frame.layout.channels))
            if params != last_params:
                check_parameters(*params, "a decoded frame")
                last_params = params
            seconds += frame.samples / frame.sample_rate
            if max_duration_s is not None and seconds > max_duration_s:
                raise Permanent(
                    f"audio is at least {max_duration_s:.0f} s long; the limit is "
                    f"{max_duration_s:.0f} s",
                    code=TOO_LONG,
                )
            decoded += 1
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
