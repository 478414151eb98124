"""Loudness report, voice analysis and voice-chain lines for `jobs show` and `submit --wait`.

Works on the result as the API and the view encode it (camelCase JSON), so both commands
print the same lines.
"""

from __future__ import annotations

from typing import Any


def _db(value: Any, unit: str) -> str:
    return "–" if value is None else f"{value:.1f} {unit}"


def _levels(levels: dict[str, Any] | None) -> str:
    if not levels:
        return "–"
    return f"{_db(levels.get('integratedLufs'), 'LUFS')} / {_db(levels.get('truePeakDb'), 'dBTP')}"


def _analysis(info: dict[str, Any] | None) -> str | None:
    if not info:
        return None
    hum = info.get("hum")
    floor = info.get("noiseFloorDb")
    parts = [
        "noise floor " + (_db(floor, "dBFS") if floor is not None else "digital silence"),
        f"SNR {_db(info.get('snrDb'), 'dB')}",
        f"hum {hum['frequencyHz']:g} Hz ({hum['levelDb']:.0f} dBFS)" if hum else "no hum",
        f"speech {round(100 * info.get('speechRatio', 0))} %",
    ]
    if info.get("clippedSamples"):
        parts.append(f"{info['clippedSamples']} clipped samples")
    return ", ".join(parts)


def _steps(steps: dict[str, Any]) -> str | None:
    done = []
    if steps.get("highpassHz"):
        done.append(f"highpass {steps['highpassHz']} Hz")
    if steps.get("notchedHz"):
        done.append(f"hum {steps['notchedHz'][0]:g} Hz notched ({len(steps['notchedHz'])})")
    if steps.get("denoiseDb") is not None:
        done.append(f"denoise {steps['denoiseDb']:.0f} dB")
    if steps.get("levelerMaxGainDb") is not None:
        done.append(f"leveler {steps['levelerMinGainDb']:+.1f}…{steps['levelerMaxGainDb']:+.1f} dB")
    if steps.get("deess") is not None:
        done.append(f"de-ess {steps['deess']:g}")
    if steps.get("trimmedMs"):
        start, end = steps["trimmedMs"]
        done.append(f"kept {start / 1000:.2f}–{end / 1000:.2f} s")
    if steps.get("cutsMs"):
        done.append(f"{len(steps['cutsMs'])} pauses shortened ({steps['cutTotalMs'] / 1000:.1f} s)")
    return "; ".join(done) or None


def report_lines(result: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) pairs: analysis (ingest), loudness before → after, applied, warnings."""
    rows: list[tuple[str, str]] = []
    if line := _analysis(result.get("analysis")):
        rows.append(("analysis", line))
    report = result.get("loudnessReport")
    if report:
        target = report.get("target")
        aim = ""
        if target:
            name = f"{target['preset']} " if target.get("preset") else ""
            value = (
                f"{target['integratedLufs']:g} LUFS"
                if target.get("integratedLufs") is not None
                else f"{target.get('rmsDb', 0):g} dB RMS"
            )
            aim = f"  (target {name}{value}, {target['truePeakDb']:g} dBTP)"
        rows.append(
            ("loudness", f"{_levels(report.get('before'))} → {_levels(report['after'])}{aim}")
        )
        if target:
            rows.append(
                (
                    "applied",
                    f"gain {report['gainDb']:+.1f} dB, limiter up to "
                    f"{report['limiterMaxReductionDb']:.1f} dB, {report['measuringPasses']} "
                    f"measuring pass(es), {report['encodePasses']} encode(s)",
                )
            )
        for warning in report.get("warnings") or []:
            rows.append(("warning", f"{warning['code']}: {warning['message']}"))
        acx = report.get("acx")
        if acx:
            mark = {True: "pass", False: "FAIL"}
            rows.append(
                (
                    "acx",
                    f"RMS {_db(acx['rmsDb'], 'dB')} {mark[acx['rmsPass']]}, peak "
                    f"{_db(acx['peakDb'], 'dB')} {mark[acx['peakPass']]}, noise floor "
                    f"{_db(acx['noiseFloorDb'], 'dB')} {mark[acx['noiseFloorPass']]}",
                )
            )
    voice = result.get("voiceReport")
    if voice:
        if line := _steps(voice.get("steps") or {}):
            rows.append(("voice", line))
        if (before := _analysis(voice.get("before"))) is not None:
            rows.append(("  before", before))
        if (after := _analysis(voice.get("after"))) is not None:
            rows.append(("  after", after))
    return rows
