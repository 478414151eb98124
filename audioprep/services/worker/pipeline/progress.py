"""Throttled progress reporting: at most a few callbacks a second, monotonic, ending at 1.0."""

from __future__ import annotations

import time
from collections.abc import Callable

MIN_INTERVAL_S = 0.25  # ≤ 4 reports a second


class Progress:
    """Turns processed media time into a 0..1 fraction for an optional callback."""

    def __init__(self, callback: Callable[[float], None] | None, total_ms: float | None) -> None:
        self._callback = callback
        self._total_ms = total_ms if total_ms and total_ms > 0 else None
        self._done_ms = 0.0
        self._last_at = 0.0
        self._last_value = 0.0

    def advance_samples(self, samples: int, rate: int) -> None:
        """Count `samples` more of output at `rate`; report when due."""
        if self._callback is None or self._total_ms is None or rate <= 0:
            return
        self._done_ms += samples * 1000 / rate
        now = time.monotonic()
        if now - self._last_at < MIN_INTERVAL_S:
            return
        value = min(self._done_ms / self._total_ms, 0.99)
        if value > self._last_value:
            self._last_at = now
            self._last_value = value
            self._callback(value)

    def done(self) -> None:
        """Report completion once."""
        if self._callback is not None and self._last_value < 1.0:
            self._last_value = 1.0
            self._callback(1.0)


class StagedProgress:
    """One monotonic 0..1 progress over a render's passes; each stage owns a span of it.

    `stage(name)` announces the stage (the job view's `stage` field) and returns the
    fraction callback for that pass; a stage that comes again (a second encode) continues
    from where progress stands instead of going back.
    """

    def __init__(
        self,
        callback: Callable[[float], None] | None,
        on_stage: Callable[[str], None] | None,
        spans: dict[str, tuple[float, float]],
    ) -> None:
        self._callback = callback
        self._on_stage = on_stage
        self._spans = spans
        self._value = 0.0
        self._seen: dict[str, int] = {}

    def stage(self, name: str) -> Callable[[float], None]:
        count = self._seen.get(name, 0) + 1
        self._seen[name] = count
        if self._on_stage is not None:
            self._on_stage(name if count == 1 else f"{name} (pass {count})")
        low, high = self._spans.get(name, (self._value, self._value))
        low = max(low, self._value)
        high = max(high, low)

        def report(fraction: float) -> None:
            value = low + (high - low) * max(0.0, min(1.0, fraction))
            if value > self._value:
                self._value = value
                if self._callback is not None:
                    self._callback(min(value, 0.999))

        return report

    def finish(self) -> None:
        """All passes done: 1.0."""
        if self._callback is not None:
            self._value = 1.0
            self._callback(1.0)
