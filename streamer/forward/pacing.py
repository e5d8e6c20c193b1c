"""The request pace towards one receiver: a rate limit that 429s slow down, and holds. Pure.

Requests start at most ``rate_per_s`` a second (evenly spaced, a burst of one). A 429
halves the current rate (never below a sixteenth of the configured one) and each
accepted request gives back a twentieth of it: the forwarder settles just under what
the receiver tolerates instead of hitting its limit again at full speed. A
``Retry-After`` (on a 429 or a 503) holds every request, not only the one that got
it: the receiver's limit is per client. Rate 0 means no limit; holds still apply.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Pacer"]

_FLOOR_FRACTION = 1 / 16
_RECOVERY_FRACTION = 1 / 20


class Pacer:
    def __init__(self, rate_per_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s < 0:
            raise ValueError(f"rate_per_s must be >= 0, got {rate_per_s}")
        self.configured = rate_per_s
        self.rate = rate_per_s
        self._clock = clock
        self._next_at = 0.0
        self._hold_until = 0.0

    @property
    def limited(self) -> bool:
        return self.configured > 0

    def hold_remaining_s(self) -> float:
        return max(0.0, self._hold_until - self._clock())

    def reserve(self) -> float:
        """Book the next request's start; returns how long to wait for it (0: go now)."""
        now = self._clock()
        start = max(now, self._hold_until)
        if self.limited:
            start = max(start, self._next_at)
            self._next_at = start + 1.0 / self.rate
        return start - now

    def hold(self, seconds: float | None) -> None:
        """No request starts before ``seconds`` from now."""
        if seconds is not None and seconds > 0:
            self._hold_until = max(self._hold_until, self._clock() + seconds)

    def throttled(self, retry_after_s: float | None) -> None:
        """The receiver answered 429."""
        self.hold(retry_after_s)
        if self.limited:
            self.rate = max(self.configured * _FLOOR_FRACTION, self.rate / 2)

    def accepted(self) -> None:
        if self.limited and self.rate < self.configured:
            self.rate = min(self.configured, self.rate + self.configured * _RECOVERY_FRACTION)
