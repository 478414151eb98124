"""MP3 via the `lameenc` package: the wheel's libmp3lame is unoptimised (NOTES: 3× the CLI).

Route: the filter graph hands packed s16 to lameenc (LAME at quality 3, the LAME/CLI
default); its frames are split by libav's mp3 parser and muxed by libav's mp3 muxer (ID3 title,
Xing/Info header with frame count and seek table). The muxer cannot know lameenc's encoder
delay, so after closing we patch the LAME tag's delay/padding field (and its CRC): decoders then
drop the priming and padding and the file decodes to exactly the rendered length.
"""

from __future__ import annotations

import struct
from fractions import Fraction

import av
import av.container
import lameenc
from av.audio.frame import AudioFrame
from av.audio.stream import AudioStream
from av.codec.context import CodecContext

LAME_QUALITY = 3  # LAME's default; what the ffmpeg CLI uses too
LAME_ENCODER_DELAY = 576  # samples LAME prepends (lame_get_encoder_delay)
_DECODER_DELAY = 528 + 1  # the mp3 decoder's own delay, added by ffmpeg on top of the tag
_XING_SIZE = 156  # "Info" .. tag CRC, as ffmpeg's mp3 muxer lays it out
_DELAY_OFFSET = 141  # 12-bit delay + 12-bit padding, from the "Info"/"Xing" tag
_CRC_SPAN = 190  # the LAME tag CRC covers the first 190 bytes of the frame
_MPEG1_KBPS = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_MPEG2_KBPS = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)


def mp3_bitrate(kbps: int, rate: int) -> int:
    """The legal MP3 bitrate nearest to `kbps` at this sample rate (MPEG-1 or MPEG-2/2.5)."""
    table = _MPEG1_KBPS if rate >= 32000 else _MPEG2_KBPS
    return min(table, key=lambda b: abs(b - kbps))


class LameWriter:
    """Encodes s16 frames with lameenc and muxes the MPEG frames into an open container."""

    def __init__(
        self,
        container: av.container.OutputContainer,
        *,
        rate: int,
        channels: int,
        bitrate_kbps: int,
        quality: int = LAME_QUALITY,
    ) -> None:
        self._container = container
        self._rate = rate
        self._channels = channels
        self._encoder = lameenc.Encoder()
        bitrate_kbps = mp3_bitrate(bitrate_kbps, rate)
        self._encoder.set_bit_rate(bitrate_kbps)
        self._encoder.set_in_sample_rate(rate)
        self._encoder.set_out_sample_rate(rate)
        self._encoder.set_channels(channels)
        self._encoder.set_quality(quality)
        # the stream only carries parameters for the muxer; packets come from lameenc
        layout = "mono" if channels == 1 else "stereo"
        stream = container.add_stream("libmp3lame", rate=rate, layout=layout)
        assert isinstance(stream, AudioStream)
        self.stream = stream
        self.stream.bit_rate = bitrate_kbps * 1000
        self._parser = CodecContext.create("mp3", "r")
        self._frame_samples = 1152 if rate >= 32000 else 576
        self._frames = 0
        self.samples_in = 0

    def encode(self, frame: AudioFrame) -> None:
        """Encode one packed-s16 frame."""
        pcm = frame.to_ndarray()[:, : frame.samples * self._channels]
        self.samples_in += frame.samples
        self._mux(bytes(self._encoder.encode(pcm.tobytes())))

    def finish(self) -> None:
        """Flush LAME and the parser."""
        self._mux(bytes(self._encoder.flush()))
        self._mux(None)

    def _mux(self, data: bytes | None) -> None:
        if data is not None and not data:
            return
        for packet in self._parser.parse(data):
            packet.stream = self.stream
            packet.time_base = Fraction(1, self._rate)
            packet.pts = packet.dts = self._frames * self._frame_samples
            packet.duration = self._frame_samples
            self._container.mux(packet)
            self._frames += 1

    def patch_header(self, path: str) -> None:
        """Write delay/padding into the closed file's LAME tag so decoders trim exactly."""
        padding = self._frames * self._frame_samples - LAME_ENCODER_DELAY - self.samples_in
        fix_lame_tag(path, delay=LAME_ENCODER_DELAY, padding=max(padding, 0))


def _id3v2_size(head: bytes) -> int:
    """Bytes taken by a leading ID3v2 tag (0 if none)."""
    if len(head) < 10 or head[:3] != b"ID3":
        return 0
    size = 0
    for byte in head[6:10]:
        size = (size << 7) | (byte & 0x7F)
    footer = 10 if head[5] & 0x10 else 0
    return 10 + size + footer


def _crc16(data: bytes) -> int:
    """CRC-16/ARC (LAME's tag CRC, ffmpeg's AV_CRC_16_ANSI_LE)."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def fix_lame_tag(path: str, *, delay: int, padding: int) -> bool:
    """Set encoder delay/padding in the Xing/Info frame; False if the file has no such tag."""
    with open(path, "r+b") as fh:
        head = fh.read(10)
        start = _id3v2_size(head)
        fh.seek(start)
        frame = bytearray(fh.read(_CRC_SPAN + 64))
        tag = max(frame.find(b"Info", 0, 64), frame.find(b"Xing", 0, 64))
        if tag < 0 or tag + _XING_SIZE > len(frame):
            return False
        value = (min(delay, 4095) << 12) | min(padding, 4095)
        frame[tag + _DELAY_OFFSET : tag + _DELAY_OFFSET + 3] = value.to_bytes(3, "big")
        crc = _crc16(bytes(frame[:_CRC_SPAN]))
        frame[tag + _XING_SIZE - 2 : tag + _XING_SIZE] = struct.pack(">H", crc)
        fh.seek(start)
        fh.write(frame[: tag + _XING_SIZE])
    return True
