"""The voice chain as pure data: which steps run, with which settings, in which order.

Order (fixed): highpass → dehum → denoise → leveler → cuts (shortenPauses) → deess, then the
gain/normalize limiter and the fades (signal_path.py). trimSilence narrows the kept window
(graph.py) from the same analysis. Each step here is decided from the recipe and the
measuring pass (VoiceAnalysis), so the rules are unit-tested without media.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from audioprep.domain.recipe import Recipe
from audioprep.services.worker.pipeline.cutter import plan_pause_cuts
from audioprep.services.worker.pipeline.denoise import RATE as DENOISE_RATE
from audioprep.services.worker.pipeline.denoise import auto_amount_db
from audioprep.services.worker.pipeline.filters import Filter
from audioprep.services.worker.pipeline.leveler import leveler_gains_db
from audioprep.services.worker.pipeline.voice_analysis import HUM_FREQUENCIES, Hum, VoiceAnalysis

Floats = npt.NDArray[np.float64]

DEHUM_HARMONICS = 6
DEHUM_WIDTH_HZ = 4
TRIM_MARGIN_MS = 150.0


@dataclass(frozen=True, slots=True)
class VoicePlan:
    """Everything the signal path needs to run the chain, plus what to report."""

    pre: list[Filter] = field(default_factory=list)  # at the source rate, after timing
    denoise_db: float | None = None  # RNNoise at 48 kHz when set
    leveler_db: Floats | None = None  # gain per analysis frame
    frame_samples: int = 0  # analysis frame length (source samples)
    cuts_ms: list[tuple[int, int]] = field(default_factory=list)  # source ms
    post: list[Filter] = field(default_factory=list)  # de-esser
    hum: Hum | None = None
    notched_hz: list[float] = field(default_factory=list)
    highpass_hz: int | None = None  # what pre/post hold, for the report
    deess: float | None = None

    @property
    def numpy_stages(self) -> bool:
        return self.denoise_db is not None or self.leveler_db is not None or bool(self.cuts_ms)

    @property
    def active(self) -> bool:
        return bool(self.pre or self.post) or self.numpy_stages

    @property
    def work_rate_override(self) -> int | None:
        return DENOISE_RATE if self.denoise_db is not None else None


def needs_analysis(recipe: Recipe, have_summary: bool) -> bool:
    """Whether the render must run the measuring pass (frame data or no ingest summary)."""
    if recipe.leveler is not None or recipe.shorten_pauses is not None or recipe.trim_silence:
        return True
    auto = recipe.dehum == "auto" or recipe.denoise == "auto"
    return auto and not have_summary


def dehum_filters(freq: float, harmonics: int, nyquist: float) -> tuple[list[Filter], list[float]]:
    """Narrow notches at the mains frequency and its harmonics."""
    chain: list[Filter] = []
    notched: list[float] = []
    for k in range(1, harmonics + 1):
        f = freq * k
        if f >= nyquist * 0.9:
            break
        chain.append(("bandreject", f"f={f:g}:width_type=h:width={DEHUM_WIDTH_HZ}"))
        notched.append(f)
    return chain, notched


def plan_voice(
    recipe: Recipe,
    *,
    analysis: VoiceAnalysis | None,
    hum: Hum | None,
    noise_floor_db: float | None,
    speech_level_db: float | None,
    source_rate: int,
) -> VoicePlan:
    """Decide the chain. `hum`/levels come from the analysis, or from the ingest's summary."""
    pre: list[Filter] = []
    if recipe.highpass_hz is not None:
        pre.append(("highpass", f"f={recipe.highpass_hz}:poles=2"))
    notched: list[float] = []
    found = hum
    if recipe.dehum is not None:
        if recipe.dehum == "auto":
            if hum is not None:
                chain, notched = dehum_filters(
                    hum.frequency_hz, max(3, hum.harmonics), source_rate / 2
                )
                pre += chain
        elif recipe.dehum in HUM_FREQUENCIES:
            chain, notched = dehum_filters(float(recipe.dehum), DEHUM_HARMONICS, source_rate / 2)
            pre += chain
    denoise_db: float | None = None
    if recipe.denoise == "auto":
        amount = auto_amount_db(noise_floor_db, speech_level_db)
        denoise_db = amount if amount > 0 else None
    elif recipe.denoise is not None:
        denoise_db = recipe.denoise.amount_db if recipe.denoise.amount_db > 0 else None
    leveler = None
    if recipe.leveler is not None and analysis is not None and recipe.leveler.strength > 0:
        leveler = leveler_gains_db(analysis, recipe.leveler.strength)
    cuts: list[tuple[int, int]] = []
    if recipe.shorten_pauses is not None and analysis is not None:
        cuts = plan_pause_cuts(analysis.pauses_ms(), recipe.shorten_pauses.max_pause_ms)
    post: list[Filter] = []
    deess = recipe.deess.amount if recipe.deess is not None and recipe.deess.amount > 0 else None
    if deess is not None:
        post.append(("deesser", f"i={deess:g}:m=0.5:f=0.5:s=o"))
    return VoicePlan(
        pre=pre,
        denoise_db=denoise_db,
        leveler_db=leveler,
        frame_samples=analysis.frame_samples if analysis else 0,
        cuts_ms=cuts,
        post=post,
        hum=found,
        notched_hz=notched,
        highpass_hz=recipe.highpass_hz,
        deess=deess,
    )


def trim_bounds_ms(analysis: VoiceAnalysis) -> tuple[int, int] | None:
    """trimSilence: where speech (or sound) starts and ends, with a natural margin."""
    return analysis.speech_bounds_ms(TRIM_MARGIN_MS)
