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
