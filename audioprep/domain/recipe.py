"""Edit recipe and output options: validated once at the edge, hashed for the render cache."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Final, Literal

import msgspec

from audioprep.domain.errors import INVALID_RECIPE, Permanent
from audioprep.domain.loudness_targets import PresetName

RENDERER_VERSION: Final = "2"  # 2: true-peak limiter + verified loudness

SaveFormat = Literal["wav", "flac", "mp3", "opus", "aac"]
PreviewFormat = Literal["opus", "aac"]

SAVE_FORMATS: Final[tuple[str, ...]] = ("wav", "flac", "mp3", "opus", "aac")
PREVIEW_FORMATS: Final[tuple[str, ...]] = ("opus", "aac")
SAMPLE_RATES: Final[tuple[int, ...]] = (
    8000,
    11025,
    12000,
    16000,
    22050,
    24000,
    32000,
    44100,
    48000,
    88200,
    96000,
    176400,
    192000,
)

_Ms = Annotated[int, msgspec.Meta(ge=0)]
_FadeMs = Annotated[int, msgspec.Meta(ge=0, le=600_000)]
_GainDb = Annotated[float, msgspec.Meta(ge=-60.0, le=30.0)]
_Speed = Annotated[float, msgspec.Meta(ge=0.5, le=2.0)]
_TargetLufs = Annotated[float, msgspec.Meta(ge=-70.0, le=-5.0)]
_TruePeakDb = Annotated[float, msgspec.Meta(ge=-9.0, le=0.0)]
# an enum, so the OpenAPI schema says which rates exist (SAMPLE_RATES below, same list)
_SampleRate = Literal[
    8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 176400, 192000
]
_Bitrate = Annotated[int, msgspec.Meta(ge=16, le=512)]
_Quality = Annotated[int, msgspec.Meta(ge=0, le=9)]


class _Base(msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """Shared Struct config: immutable, camelCase on the wire, strict."""


class Trim(_Base, frozen=True):
    """Keep only [start_ms, end_ms) of the source; end None means to the end."""

    start_ms: _Ms = 0
    end_ms: _Ms | None = None


class Normalize(_Base, frozen=True):
    """EBU R128 target: a preset, or integrated loudness and a true-peak ceiling (-16 / -1.5)."""

    preset: PresetName | None = None
    target_lufs: _TargetLufs | None = None
    true_peak_db: _TruePeakDb | None = None


class Denoise(_Base, frozen=True):
    """RNNoise, mixed so the noise drops by at most `amountDb`."""

    amount_db: Annotated[float, msgspec.Meta(ge=0.0, le=40.0)] = 20.0


class Leveler(_Base, frozen=True):
    """Ride speech passages towards the file's speech level (0 = off, 1 = all the way)."""

    strength: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.7


class Deess(_Base, frozen=True):
    amount: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.5


class ShortenPauses(_Base, frozen=True):
    """Inner pauses longer than `maxPauseMs` are cut down to it."""

    max_pause_ms: Annotated[int, msgspec.Meta(ge=300, le=5000)] = 1000


# What keys.is_safe_key accepts, for schemas (a key outside it is a 422 `invalid_source_key`,
# not a validation error): segments without control characters, none empty, `.` or `..`, no
# leading `/`.
_SEGMENT = r"([^/\x00-\x1f.][^/\x00-\x1f]*|[.][^/\x00-\x1f.][^/\x00-\x1f]*|[.][.][^/\x00-\x1f]+)"
SAFE_KEY_PATTERN: Final = f"^{_SEGMENT}(/{_SEGMENT})*$"
_SourceKey = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=1024, extra_json_schema={"pattern": SAFE_KEY_PATTERN}),
]


class IntroOutro(_Base, frozen=True):
    """A jingle of this tenant (an ingested source) before or after the episode: matched to
    the episode's loudness and joined with an equal-power crossfade (docs/publishing.md)."""

    source_key: _SourceKey
    crossfade_ms: Annotated[int, msgspec.Meta(ge=10, le=30_000)] = 1000


class Recipe(_Base, frozen=True):
    """What to do to a source; the defaults are the identity edit.

    Voice chain order (fixed): highpass → dehum → denoise → leveler → deess → cuts
    (trimSilence, shortenPauses) → gain/normalize + limiter → fades.
    """

    trim: Trim | None = None
    fade_in_ms: _FadeMs = 0
    fade_out_ms: _FadeMs = 0
    gain_db: _GainDb = 0.0
    normalize: Normalize | None = None
    speed: _Speed = 1.0
    trim_silence: bool = False
    channels: Literal["mono", "stereo"] | None = None
    sample_rate: _SampleRate | None = None
    highpass_hz: Annotated[int, msgspec.Meta(ge=20, le=300)] | None = None
    dehum: Literal["auto", 50, 60] | None = None
    denoise: Denoise | Literal["auto"] | None = None
    leveler: Leveler | None = None
    deess: Deess | None = None
    shorten_pauses: ShortenPauses | None = None
    intro: IntroOutro | None = None  # before the episode (the whole output is then normalised)
    outro: IntroOutro | None = None


class OutputOptions(_Base, frozen=True):
    """Encoder knobs; None means the format's default."""

    bitrate: _Bitrate | None = None  # kbps, lossy formats only
    quality: _Quality | None = None  # mp3 encoder quality (0 best .. 9 fastest)
    bit_depth: Literal[16, 24] = 16  # wav and flac


class RecipeError(Permanent):
    """A recipe that passes field validation but breaks a cross-field rule."""

    default_code = INVALID_RECIPE

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{message} - at `$.{field}`", code=INVALID_RECIPE)
        self.field = field


def check_recipe(recipe: Recipe) -> None:
    """Enforce rules msgspec constraints cannot express."""
    trim = recipe.trim
    if trim is not None and trim.end_ms is not None and trim.end_ms <= trim.start_ms:
        raise RecipeError("trim.endMs", "must be greater than trim.startMs")
    norm = recipe.normalize
    explicit = norm is not None and (norm.target_lufs is not None or norm.true_peak_db is not None)
    if norm is not None and norm.preset is not None and explicit:
        raise RecipeError("normalize.preset", "cannot be combined with targetLufs/truePeakDb")
    if recipe.sample_rate is not None and recipe.sample_rate not in SAMPLE_RATES:
        allowed = ", ".join(str(r) for r in SAMPLE_RATES)
        raise RecipeError("sampleRate", f"must be one of {allowed}")


_decoder: Final = msgspec.json.Decoder(Recipe)
_encoder: Final = msgspec.json.Encoder(order="sorted")


def decode_recipe(raw: bytes) -> Recipe:
    """Decode and fully check a JSON recipe (msgspec.ValidationError or RecipeError)."""
    recipe = _decoder.decode(raw)
    check_recipe(recipe)
    return recipe


def _canonical(value: Any) -> Any:
    """Drop default-valued fields recursively so equal edits encode to equal bytes."""
    if isinstance(value, msgspec.Struct):
        out: dict[str, Any] = {}
        for info in msgspec.structs.fields(value):
            field = getattr(value, info.name)
            default = info.default
            if info.default_factory is not msgspec.NODEFAULT:
                default = info.default_factory()
            if default is msgspec.NODEFAULT or field != default:  # required fields stay
                out[info.encode_name] = _canonical(field)
        return out
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def normalized_recipe_bytes(recipe: Recipe) -> bytes:
    """Canonical JSON of a recipe: defaults dropped, keys sorted."""
    return _encoder.encode(_canonical(recipe))


def render_cache_key(
    source_key: str,
    recipe: Recipe,
    fmt: str,
    options: OutputOptions | None = None,
    renderer_version: str = RENDERER_VERSION,
) -> str:
    """sha256 hex naming one render: same inputs, same output, same key."""
    payload = {
        "format": fmt,
        "options": _canonical(options) if options is not None else {},
        "recipe": _canonical(recipe),
        "renderer": renderer_version,
        "source": source_key,
    }
    return hashlib.sha256(_encoder.encode(payload)).hexdigest()
