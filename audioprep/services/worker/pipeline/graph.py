"""Recipe → libavfilter chain, as pure data so every rule is unit-tested without media."""

from __future__ import annotations

from dataclasses import dataclass

from audioprep.domain.recipe import Recipe
from audioprep.services.worker.pipeline.loudness import Loudness

Filter = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Window:
    """The part of the source that is kept, in source milliseconds (end None = to the end)."""

    start_ms: int
    end_ms: int | None

    def length_ms(self, source_duration_ms: int) -> int:
        """Kept length, given the source length."""
        end = source_duration_ms if self.end_ms is None else min(self.end_ms, source_duration_ms)
        return max(end - self.start_ms, 0)


def _secs(ms: float) -> str:
    """Milliseconds as a seconds string libavfilter parses exactly."""
    return f"{ms / 1000:.6f}".rstrip("0").rstrip(".") or "0"


def kept_window(
    recipe: Recipe, *, source_duration_ms: int, sound_bounds_ms: tuple[int, int] | None
) -> Window:
    """Trim window, narrowed to where sound is when trimSilence found any."""
    start = recipe.trim.start_ms if recipe.trim else 0
    end = recipe.trim.end_ms if recipe.trim else None
    if recipe.trim_silence and sound_bounds_ms is not None:
        sound_start, sound_end = sound_bounds_ms
        if sound_end > max(start, sound_start) and (end is None or sound_start < end):
            start = max(start, sound_start)
            end = sound_end if end is None else min(end, sound_end)
    if end is not None and end >= source_duration_ms:
        end = None
    return Window(min(start, source_duration_ms), end)


def output_length_ms(
    recipe: Recipe, *, source_duration_ms: int, sound_bounds_ms: tuple[int, int] | None
) -> float:
    """Length of the rendered audio: kept window over speed."""
    window = kept_window(
        recipe, source_duration_ms=source_duration_ms, sound_bounds_ms=sound_bounds_ms
    )
    return window.length_ms(source_duration_ms) / recipe.speed


def prefix_chain(
    recipe: Recipe, *, source_duration_ms: int, sound_bounds_ms: tuple[int, int] | None
) -> list[Filter]:
    """Timing filters (zero-based pts, trim, tempo): what normalisation has to measure."""
    window = kept_window(
        recipe, source_duration_ms=source_duration_ms, sound_bounds_ms=sound_bounds_ms
    )
    chain: list[Filter] = [("asetpts", "PTS-STARTPTS")]
    if window.start_ms > 0 or window.end_ms is not None:
        args = f"start={_secs(window.start_ms)}"
        if window.end_ms is not None:
            args += f":end={_secs(window.end_ms)}"
        chain += [("atrim", args), ("asetpts", "PTS-STARTPTS")]
    if recipe.speed != 1.0:
        chain.append(("atempo", f"{recipe.speed:g}"))
    return chain


def gain_db(recipe: Recipe, measured: Loudness | None, target: float | None = None) -> float:
    """Static gain: gainDb, or with normalize the gain from measured to target loudness.

    The true-peak ceiling is not a cap any more: the limiter holds it (speech's crest factor
    would otherwise stop the gain 1.4-6.5 LU short of -16 LUFS).
    """
    norm = recipe.normalize
    if norm is None:
        return recipe.gain_db
    if measured is None or target is None:
        return 0.0
    if measured.integrated_lufs is None or measured.integrated_lufs <= -70.0:
        return 0.0  # silence: nothing to normalise
    return target - measured.integrated_lufs


FLOAT_PLANAR: Filter = ("aformat", "sample_fmts=fltp")  # before gain: s16 would clip


def level_chain(gain: float) -> list[Filter]:
    """The static gain (in float, so a gain above 0 dB cannot clip before the limiter)."""
    if abs(gain) < 0.005:
        return []
    return [FLOAT_PLANAR, ("volume", f"volume={gain:.3f}dB")]


def fade_chain(recipe: Recipe, length_ms: float) -> list[Filter]:
    """Fades at the start and end of the output (output time, after tempo)."""
    chain: list[Filter] = []
    fade_in = min(recipe.fade_in_ms, length_ms)
    if fade_in > 0:
        chain.append(("afade", f"t=in:st=0:d={_secs(fade_in)}"))
    fade_out = min(recipe.fade_out_ms, length_ms)
    if fade_out > 0:
        chain.append(("afade", f"t=out:st={_secs(length_ms - fade_out)}:d={_secs(fade_out)}"))
    return chain


def format_chain(
    *, source_rate: int, out_rate: int, out_layout: str, sample_fmt: str
) -> list[Filter]:
    """Resample if needed, then the exact format, rate and layout the next stage takes."""
    chain: list[Filter] = []
    if out_rate != source_rate:
        chain.append(("aresample", str(out_rate)))
    chain.append(
        (
            "aformat",
            f"sample_fmts={sample_fmt}:sample_rates={out_rate}:channel_layouts={out_layout}",
        )
    )
    return chain


def build_filter_chain(
    recipe: Recipe,
    *,
    source_rate: int,
    source_channels: int,
    source_duration_ms: int,
    measured: Loudness | None,
    sound_bounds_ms: tuple[int, int] | None,
    out_rate: int,
    out_layout: str,
    out_sample_fmt: str,
    target: float | None = None,
) -> list[Filter]:
    """Filters between the source's abuffer and the sink, in order (no limiter)."""
    chain = prefix_chain(
        recipe, source_duration_ms=source_duration_ms, sound_bounds_ms=sound_bounds_ms
    )
    chain += level_chain(gain_db(recipe, measured, target))
    length = output_length_ms(
        recipe, source_duration_ms=source_duration_ms, sound_bounds_ms=sound_bounds_ms
    )
    chain += fade_chain(recipe, length)
    chain += format_chain(
        source_rate=source_rate, out_rate=out_rate, out_layout=out_layout, sample_fmt=out_sample_fmt
    )
    return chain


def output_layout(recipe: Recipe, source_channels: int) -> str:
    """mono or stereo: the recipe's choice, else mono stays mono and the rest is downmixed."""
    if recipe.channels is not None:
        return recipe.channels
    return "mono" if source_channels == 1 else "stereo"
