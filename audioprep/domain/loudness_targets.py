"""Loudness presets: the one table of platform targets, and how a recipe's normalize resolves.

Sources (as published by each platform or standard body, 2026):
- apple-podcasts: Apple Podcasts "Audio requirements": -16 LKFS ±1 dB, true peak ≤ -1 dBFS.
- spotify: Spotify for Artists "Loudness normalization": -14 LUFS, ≤ -1 dBTP (lossy encoding).
- youtube: YouTube plays back at about -14 LUFS (normalisation reference); -1 dBTP keeps the
  lossy re-encode from clipping.
- amazon-music: Amazon Music "Audio file requirements": -14 LUFS integrated, ≤ -2 dBTP.
- ebu-r128: EBU R 128 (2023): -23 LUFS, ≤ -1 dBTP.
- atsc-a85: ATSC A/85 (2013): -24 LKFS, ≤ -2 dBTP.
- audiobook-acx: ACX "Audio Submission Requirements": RMS between -23 and -18 dBFS, peaks
  ≤ -3 dBFS, noise floor ≤ -60 dBFS RMS. We aim at -20 dB RMS (the middle) with a -3 dBTP
  ceiling (a true-peak ceiling also holds the sample peak) and report the three checks.

Mono outputs of the podcast/streaming presets aim 3 LU lower (-19 for apple-podcasts): a mono
file is played on both speakers or ear-pieces, which sounds 3 dB louder than a stereo file of
the same BS.1770 loudness (AES TD1004's -16 stereo / -19 mono). Explicit `targetLufs` values
are applied exactly as given, mono or not; broadcast presets (ebu-r128, atsc-a85) measure mono
per their standards, so they get no offset either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

PresetName = Literal[
    "apple-podcasts",
    "spotify",
    "youtube",
    "amazon-music",
    "ebu-r128",
    "atsc-a85",
    "audiobook-acx",
]

Measure = Literal["lufs", "rms"]

DEFAULT_TARGET_LUFS: Final = -16.0
DEFAULT_TRUE_PEAK_DB: Final = -1.5
MONO_OFFSET_LU: Final = -3.0

# ACX checks (dBFS)
ACX_RMS_MIN: Final = -23.0
ACX_RMS_MAX: Final = -18.0
ACX_PEAK_MAX: Final = -3.0
ACX_NOISE_FLOOR_MAX: Final = -60.0


@dataclass(frozen=True, slots=True)
class Preset:
    """A published delivery target."""

    target: float  # LUFS, or dBFS RMS when measure == "rms"
    true_peak_db: float
    measure: Measure = "lufs"
    mono_offset: bool = True


PRESETS: Final[dict[str, Preset]] = {
    "apple-podcasts": Preset(-16.0, -1.0),
    "spotify": Preset(-14.0, -1.0),
    "youtube": Preset(-14.0, -1.0),
    "amazon-music": Preset(-14.0, -2.0),
    "ebu-r128": Preset(-23.0, -1.0, mono_offset=False),
    "atsc-a85": Preset(-24.0, -2.0, mono_offset=False),
    "audiobook-acx": Preset(-20.0, -3.0, measure="rms", mono_offset=False),
}


@dataclass(frozen=True, slots=True)
class LoudnessTarget:
    """What a render aims at, fully resolved."""

    target: float
    true_peak_db: float
    measure: Measure
    preset: str | None

    @property
    def is_acx(self) -> bool:
        return self.preset == "audiobook-acx"


def resolve_target(
    *,
    preset: str | None,
    target_lufs: float | None,
    true_peak_db: float | None,
    mono: bool,
) -> LoudnessTarget:
    """A preset's numbers (with the mono convention), or the explicit/default ones."""
    if preset is not None:
        p = PRESETS[preset]
        target = p.target + (MONO_OFFSET_LU if mono and p.mono_offset else 0.0)
        return LoudnessTarget(target, p.true_peak_db, p.measure, preset)
    return LoudnessTarget(
        DEFAULT_TARGET_LUFS if target_lufs is None else target_lufs,
        DEFAULT_TRUE_PEAK_DB if true_peak_db is None else true_peak_db,
        "lufs",
        None,
    )
