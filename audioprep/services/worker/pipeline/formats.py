"""Output formats: one table so codec, container, extension and MIME type never disagree."""

from __future__ import annotations

from dataclasses import dataclass

from audioprep.domain.errors import INVALID_RECIPE, Permanent
from audioprep.domain.recipe import OutputOptions

_MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
_AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """How one save/preview format is written."""

    name: str
    codec: str  # PyAV encoder name
    container: str  # libavformat muxer name
    extension: str
    mime: str
    sample_fmt: str  # what the filter graph hands the encoder
    default_bitrate_kbps: int | None  # None = lossless
    rates: tuple[int, ...] | None  # allowed output rates; None = any
    max_rate: int = 192_000

    def output_rate(self, wanted: int) -> int:
        """The allowed rate nearest to `wanted`, preferring the higher one on a tie."""
        if self.rates is None:
            return min(wanted, self.max_rate)
        return min(self.rates, key=lambda r: (abs(r - wanted), -r))


FORMATS: dict[str, OutputFormat] = {
    "wav": OutputFormat("wav", "pcm_s16le", "wav", "wav", "audio/wav", "s16", None, None),
    "flac": OutputFormat("flac", "flac", "flac", "flac", "audio/flac", "s16", None, None, 655_350),
    "mp3": OutputFormat("mp3", "libmp3lame", "mp3", "mp3", "audio/mpeg", "fltp", 192, _MP3_RATES),
    # Opus always runs at 48 kHz inside; other rates only change the encoder's bandwidth.
    "opus": OutputFormat("opus", "libopus", "ogg", "opus", "audio/ogg", "flt", 128, (48000,)),
    "aac": OutputFormat("aac", "aac", "ipod", "m4a", "audio/mp4", "fltp", 192, _AAC_RATES),
}

PREVIEW_BITRATE_KBPS = 96  # previews are for listening in a browser, not for keeping
PREVIEW_OPTIONS = OutputOptions(bitrate=PREVIEW_BITRATE_KBPS)


@dataclass(frozen=True, slots=True)
class EncoderSettings:
    """Resolved encoder choice for one render."""

    fmt: OutputFormat
    codec: str
    sample_fmt: str
    bitrate_kbps: int | None


def output_format(name: str) -> OutputFormat:
    """Look a format up by name, as a Permanent error when unknown."""
    try:
        return FORMATS[name]
    except KeyError:
        raise Permanent(f"unknown output format {name!r}", code=INVALID_RECIPE) from None


def encoder_settings(name: str, options: OutputOptions | None) -> EncoderSettings:
    """Apply output options (bit depth, bitrate) to a format's defaults."""
    fmt = output_format(name)
    opts = options or OutputOptions()
    codec, sample_fmt = fmt.codec, fmt.sample_fmt
    if opts.bit_depth == 24 and name == "wav":
        codec, sample_fmt = "pcm_s24le", "s32"
    elif opts.bit_depth == 24 and name == "flac":
        sample_fmt = "s32"
    bitrate = fmt.default_bitrate_kbps
    if bitrate is not None and opts.bitrate is not None:
        bitrate = opts.bitrate
    return EncoderSettings(fmt, codec, sample_fmt, bitrate)
