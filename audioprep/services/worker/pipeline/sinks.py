"""Encoders fed frame by frame, so one run of the signal path can feed several outputs.

A render with one output hands each sink frames already in its format (the signal path's last
graph ends with the sink's `tail`), exactly as a single encode always did. With several
outputs the path ends in planar float at its own rate and each sink converts for itself in a
small graph of its own (resampling when its format needs another rate: opus is always 48 kHz).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import BinaryIO

import av
import av.container
import av.filter
from av.audio.frame import AudioFrame
from av.audio.stream import AudioStream

from audioprep.domain.errors import RENDER_FAILED, Permanent
from audioprep.domain.recipe import OutputOptions
from audioprep.services.worker.pipeline.filters import Filter, feed, make_pcm_graph
from audioprep.services.worker.pipeline.formats import EncoderSettings
from audioprep.services.worker.pipeline.mp3 import LAME_QUALITY, LameWriter
from audioprep.services.worker.pipeline.wav import WavWriter

LAME_FRAME = 1152 * 4  # samples per graph frame fed to lameenc (any size works)
WAV_FRAME = 4096  # samples per frame fed to the PCM encoder
CODEC_NAMES = {"libmp3lame": "mp3", "libopus": "opus"}  # reported like probe reports them


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """One file a render writes."""

    dst_path: str
    fmt: str
    options: OutputOptions | None = None


class Sink:
    """One output file: open, `write` frames in the sink's own format, `close` (or `abort`)."""

    def __init__(
        self,
        dst_path: str,
        settings: EncoderSettings,
        options: OutputOptions | None,
        *,
        rate: int,
        layout: str,
        title: str | None,
    ) -> None:
        self.dst_path = dst_path
        self.settings = settings
        self.rate = rate
        self.layout = layout
        self.channels = 1 if layout == "mono" else 2
        self._options = options
        self._title = title
        self._out: av.container.OutputContainer | None = None
        self._encoder: AudioStream | None = None
        self._lame: LameWriter | None = None
        self._pcm: av.AudioCodecContext | None = None
        self._fh: BinaryIO | None = None
        self._wav: WavWriter | None = None
        self._converter: av.filter.Graph | None = None
        self.samples = 0
        self.frame_size: int | None = None

    @property
    def sample_fmt(self) -> str:
        return "s16" if self.settings.codec == "libmp3lame" else self.settings.sample_fmt

    @property
    def tail(self) -> list[Filter]:
        """What the last graph ends with for this sink (format, rate, layout)."""
        return [
            (
                "aformat",
                f"sample_fmts={self.sample_fmt}:sample_rates={self.rate}"
                f":channel_layouts={self.layout}",
            )
        ]

    @property
    def codec_name(self) -> str:
        return CODEC_NAMES.get(self.settings.codec, self.settings.codec)

    def open(self) -> None:
        """Create the file and the encoder; `frame_size` is known after this (see NOTES)."""
        try:
            if self.settings.fmt.name == "wav":
                self._open_wav()
            else:
                self._open_container()
        except av.FFmpegError as exc:
            raise Permanent(f"render failed: {exc}", code=RENDER_FAILED) from exc

    def _open_wav(self) -> None:
        codec = av.CodecContext.create(self.settings.codec, "w")
        assert isinstance(codec, av.AudioCodecContext)
        codec.sample_rate = self.rate
        codec.layout = self.layout
        codec.format = self.settings.sample_fmt
        codec.open()
        self._pcm = codec
        bits = 24 if self.settings.codec == "pcm_s24le" else 16
        self._fh = open(self.dst_path, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._wav = WavWriter(
            self._fh, rate=self.rate, channels=self.channels, bits=bits, title=self._title
        )
        self.frame_size = WAV_FRAME

    def _open_container(self) -> None:
        out = av.open(self.dst_path, "w", format=self.settings.fmt.container)
        self._out = out
        if self._title:
            out.metadata["title"] = self._title
        if self.settings.codec == "libmp3lame":
            options = self._options
            quality = options.quality if options and options.quality is not None else None
            self._lame = LameWriter(
                out,
                rate=self.rate,
                channels=self.channels,
                bitrate_kbps=self.settings.bitrate_kbps or 192,
                quality=LAME_QUALITY if quality is None else quality,
            )
            self.frame_size = LAME_FRAME
            return
        stream = out.add_stream(self.settings.codec, rate=self.rate, layout=self.layout)
        if not isinstance(stream, AudioStream):
            raise Permanent(f"{self.settings.codec} is not an audio encoder", code=RENDER_FAILED)
        stream.format = self.settings.sample_fmt
        if self.settings.bitrate_kbps is not None:
            stream.bit_rate = self.settings.bitrate_kbps * 1000
        stream.codec_context.open()
        self._encoder = stream
        self.frame_size = stream.codec_context.frame_size or None

    def convert_from(self, rate: int, layout: str) -> None:
        """Frames will come as planar float at `rate`: convert (and resample) them here."""
        chain: list[Filter] = []
        if rate != self.rate:
            chain.append(("aresample", str(self.rate)))
        self._converter = make_pcm_graph(
            rate, layout, [*chain, *self.tail], frame_size=self.frame_size
        )

    def write(self, frame: AudioFrame) -> None:
        try:
            if self._converter is None:
                self._encode(frame)
                return
            for converted in feed(self._converter, frame):
                self._encode(converted)
        except av.FFmpegError as exc:
            raise Permanent(f"render failed: {exc}", code=RENDER_FAILED) from exc

    def _encode(self, frame: AudioFrame) -> None:
        self.samples += frame.samples
        if self._lame is not None:
            self._lame.encode(frame)
        elif self._pcm is not None:
            assert self._wav is not None
            for packet in self._pcm.encode(frame):
                self._wav.write(bytes(packet))
        else:
            assert self._encoder is not None and self._out is not None
            for packet in self._encoder.encode(frame):
                self._out.mux(packet)

    def close(self) -> None:
        """Flush the converter and the encoder, finish the file."""
        try:
            if self._converter is not None:
                for converted in feed(self._converter, None):
                    self._encode(converted)
                self._converter = None
            if self._pcm is not None:
                assert self._wav is not None and self._fh is not None
                for packet in self._pcm.encode(None):
                    self._wav.write(bytes(packet))
                self._wav.close()
                self._fh.close()
                self._fh = None
                return
            assert self._out is not None
            if self._lame is not None:
                self._lame.finish()
            elif self._encoder is not None:
                for packet in self._encoder.encode(None):
                    self._out.mux(packet)
            self._out.close()
            self._out = None
        except av.FFmpegError as exc:
            raise Permanent(f"render failed: {exc}", code=RENDER_FAILED) from exc
        if self._lame is not None:
            self._lame.patch_header(self.dst_path)

    def abort(self) -> None:
        """Close whatever is open and remove the partial file."""
        with contextlib.suppress(Exception):
            if self._out is not None:
                self._out.close()
        with contextlib.suppress(Exception):
            if self._fh is not None:
                self._fh.close()
        self._out = None
        self._fh = None
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.dst_path)
