"""WAV output written by us: WAVE_FORMAT_EXTENSIBLE with the channel mask, always.

FFmpeg's wav muxer writes a plain PCM header (no channel mask) for 16-bit mono/stereo at up to
48 kHz, so ffprobe and players report the layout as "unknown". We take the PCM bytes from the
encoder and write the RIFF ourselves: `fmt ` as WAVE_FORMAT_EXTENSIBLE (mask FL|FR for stereo,
FC for mono), an optional LIST/INFO title, `data`; sizes patched on close.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

_PCM_GUID = bytes.fromhex("0100000000001000800000aa00389b71")  # KSDATAFORMAT_SUBTYPE_PCM
_MASKS = {1: 0x4, 2: 0x3}  # SPEAKER_FRONT_CENTER; SPEAKER_FRONT_LEFT | SPEAKER_FRONT_RIGHT
_EXTENSIBLE = 0xFFFE
_MAX_RIFF = 0xFFFFFFFF


def _info_chunk(title: str) -> bytes:
    text = title.encode("utf-8", "replace")[:4096] + b"\x00"
    if len(text) % 2:
        text += b"\x00"
    inam = b"INAM" + struct.pack("<I", len(text)) + text
    body = b"INFO" + inam
    return b"LIST" + struct.pack("<I", len(body)) + body


class WavWriter:
    """Header first, PCM bytes as they come, sizes at the end."""

    def __init__(
        self, fh: BinaryIO, *, rate: int, channels: int, bits: int, title: str | None = None
    ) -> None:
        self._fh = fh
        block_align = channels * bits // 8
        fmt = struct.pack(
            "<HHIIHHHHI16s",
            _EXTENSIBLE,
            channels,
            rate,
            rate * block_align,
            block_align,
            bits,
            22,  # cbSize
            bits,  # valid bits per sample
            _MASKS.get(channels, 0),
            _PCM_GUID,
        )
        header = b"RIFF\x00\x00\x00\x00WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
        if title:
            header += _info_chunk(title)
        header += b"data\x00\x00\x00\x00"
        fh.write(header)
        self._data_size_at = len(header) - 4
        self._data = 0

    def write(self, pcm: bytes) -> None:
        self._fh.write(pcm)
        self._data += len(pcm)

    def close(self) -> None:
        """Pad to an even size and patch the RIFF and data sizes."""
        if self._data % 2:
            self._fh.write(b"\x00")
        end = self._fh.tell()
        self._fh.seek(4)
        self._fh.write(struct.pack("<I", min(end - 8, _MAX_RIFF)))
        self._fh.seek(self._data_size_at)
        self._fh.write(struct.pack("<I", min(self._data, _MAX_RIFF)))
        self._fh.seek(end)
