"""Retries with exponential backoff and full jitter, bounded; only for errors that say they may pass."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from streamer.errors import DependencyUnavailable, StreamerError
from streamer.runtime.settings import RuntimeSettings

if TYPE_CHECKING:
    from streamer.runtime.circuit import CircuitBreaker
    from streamer.runtime.metrics import RuntimeMetrics

__all__ = ["RetryPolicy", "retry_async"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    initial_backoff_ms: int = 300
    max_backoff_ms: int = 30_000
    max_attempts: int = 5

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.initial_backoff_ms < 0 or self.max_backoff_ms < 0:
            raise ValueError(f"invalid retry policy {self!r}: attempts >= 1, backoffs >= 0")

    @classmethod
    def from_settings(cls, s: RuntimeSettings) -> RetryPolicy:
        return cls(s.retry_initial_backoff_ms, s.retry_max_backoff_ms, s.retry_max_attempts)

    def backoff_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full jitter (AWS architecture blog): uniform over [0, min(cap, base * 2^(n-1))].

        Full rather than equal jitter so that a consumer group's members, all hit by the
        same outage, spread their retries instead of hammering the dependency in step.
        """
        ceiling_ms = min(self.max_backoff_ms, self.initial_backoff_ms * 2 ** max(0, attempt - 1))
        return (rng or random).uniform(0, ceiling_ms) / 1000


async def retry_async(
    fn: Callable[[], Awaitable[T]],
    *,
    dependency: str,
    policy: RetryPolicy,
    breaker: CircuitBreaker | None = None,
    breakers: Mapping[str, CircuitBreaker] | None = None,
    metrics: RuntimeMetrics | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Call ``fn`` until it succeeds, a non-retriable error occurs, or retrying is pointless.

    Only ``DependencyUnavailable`` is retried here (other retriable errors, a fenced or
    re-planned batch, are the runner's to take again), never sooner than their
    ``retry_after_s`` when they carry one; a wait longer than the policy's largest
    backoff is not slept here but re-raised, for the runner to wait out paused and
    polling. Any other ``StreamerError``
    proves the dependency answered, so it counts as a success for the breaker (it
    must not wedge a half-open probe). ``CircuitOpenError`` is raised without calling
    ``fn`` when the breaker refuses; once the breaker opens during the retries, or
    after ``policy.max_attempts`` calls, the last error is re-raised.
    """
    attempt = 0
    while True:
        attempt += 1
        if breaker is not None:
            breaker.check()
        try:
            result = await fn()
        except DependencyUnavailable as exc:
            # Counted by the breaker of the dependency that failed: a commit (PostgreSQL's
            # call) whose publication finds Kafka down counts against Kafka's.
            failed = (breakers or {}).get(exc.dependency)
            if failed is None and breaker is not None and exc.dependency == dependency:
                failed = breaker
            if failed is not None:
                failed.record_failure(exc.message)
            if attempt >= policy.max_attempts or (breaker is not None and breaker.state == "open"):
                raise
            # Never sooner than the dependency asked for (e.g. an HTTP Retry-After).
            asked_s = exc.retry_after_s or 0.0
            if asked_s > policy.max_backoff_ms / 1000:
                # A wait this long is the runner's: it pauses and keeps polling meanwhile,
                # where sleeping here would outlast max.poll.interval.ms.
                raise
            delay = max(policy.backoff_s(attempt), asked_s)
            if metrics is not None:
                metrics.retries.labels(exc.dependency).inc()
            log.warning(
                "%s failed (attempt %d of %d), retrying in %.2fs: %s",
                exc.dependency,
                attempt,
                policy.max_attempts,
                delay,
                exc,
            )
            await sleep(delay)
            continue
        except StreamerError:
            # Any other answer proves the dependency answered: a success for the breaker
            # (it must not wedge a half-open probe); the error is the caller's.
            if breaker is not None:
                breaker.record_success()
            raise
        if breaker is not None:
            breaker.record_success()
        return result
