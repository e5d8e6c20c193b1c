"""A circuit breaker per dependency, so an outage pauses the worker instead of flooding retries.

closed -> open after ``failure_threshold`` consecutive failures; open refuses calls
until ``reset_timeout_s`` has passed; then half-open lets exactly one probe through.
The probe's success closes the circuit, its failure re-opens it and restarts the
timer. A probe whose outcome is never recorded (the caller crashed, was cancelled)
does not wedge the breaker: after another ``reset_timeout_s`` a new probe is let through.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from streamer.errors import DependencyUnavailable

if TYPE_CHECKING:
    from streamer.runtime.metrics import RuntimeMetrics

__all__ = ["CircuitBreaker", "CircuitOpenError", "State"]

log = logging.getLogger(__name__)
State = Literal["closed", "open", "half_open"]
_GAUGE: dict[State, int] = {"closed": 0, "half_open": 1, "open": 2}


class CircuitOpenError(DependencyUnavailable):
    """The dependency's circuit is open; the call was not attempted."""

    reason = "circuit_open"

    def __init__(self, dependency: str, retry_after_s: float) -> None:
        super().__init__(
            f"circuit for {dependency} is open; next probe in {retry_after_s:.1f}s",
            retry_after_s=retry_after_s,
        )
        self.dependency = dependency


class CircuitBreaker:
    def __init__(
        self,
        dependency: str,
        *,
        failure_threshold: int = 3,
        reset_timeout_s: float = 2.0,
        metrics: RuntimeMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if reset_timeout_s <= 0:
            raise ValueError(f"reset_timeout_s must be > 0, got {reset_timeout_s}")
        self.dependency = dependency
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._metrics = metrics
        self._clock = clock
        self._state: State = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probe_started_at: float | None = None
        self.opened_count = 0
        # What the last failure said: an operator reading the readiness probe or the log
        # must tell "unreachable" from "access denied" without digging.
        self.last_error: str | None = None
        if metrics is not None:
            metrics.circuit_state.labels(dependency).set(_GAUGE["closed"])

    @property
    def state(self) -> State:
        return self._state

    def _set(self, state: State) -> None:
        if state != self._state:
            log.warning(
                "circuit %s: %s -> %s%s",
                self.dependency,
                self._state,
                state,
                f" (last error: {self.last_error})" if state == "open" and self.last_error else "",
            )
            if state == "open":
                self.opened_count += 1
        self._state = state
        if self._metrics is not None:
            self._metrics.circuit_state.labels(self.dependency).set(_GAUGE[state])

    def retry_after_s(self) -> float:
        """Seconds until the next probe may go through; 0 when a call would be allowed now."""
        now = self._clock()
        if self._state == "open":
            return max(0.0, self._opened_at + self.reset_timeout_s - now)
        if self._state == "half_open" and self._probe_started_at is not None:
            return max(0.0, self._probe_started_at + self.reset_timeout_s - now)
        return 0.0

    def allow(self) -> bool:
        if self._state == "closed":
            return True
        if self.retry_after_s() > 0:
            return False
        self._set("half_open")
        self._probe_started_at = self._clock()
        return True

    def check(self) -> None:
        """Raise ``CircuitOpenError`` unless a call may go through now."""
        if not self.allow():
            raise CircuitOpenError(self.dependency, self.retry_after_s())

    def record_success(self) -> None:
        self._failures = 0
        self._probe_started_at = None
        self._set("closed")
        self.last_error = None

    def record_failure(self, error: str | None = None) -> None:
        self._failures += 1
        if error is not None:
            self.last_error = error
        if self._state == "half_open" or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
            self._probe_started_at = None
            self._set("open")
