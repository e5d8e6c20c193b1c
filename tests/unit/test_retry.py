"""Backoff and retry decisions, with a recorded sleep instead of real waiting."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import pytest
from prometheus_client import CollectorRegistry

from streamer.runtime.circuit import CircuitBreaker, CircuitOpenError
from streamer.runtime.errors import (
    BrokerUnavailable,
    DatabaseDataError,
    DatabaseUnavailable,
    StateChanged,
)
from streamer.runtime.metrics import RuntimeMetrics as Metrics
from streamer.runtime.retry import RetryPolicy, retry_async
from streamer.storage.errors import ObjectStoreUnavailable

pytestmark = pytest.mark.unit


class Ceiling(random.Random):
    """An rng that always draws the top of the range: exposes the backoff ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Recorder:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def failing(errors: list[BaseException], result: str = "ok") -> Callable[[], Awaitable[str]]:
    """A call that raises the given errors in turn, then returns ``result``; counts its calls."""

    async def call() -> str:
        call.calls += 1  # type: ignore[attr-defined]
        if errors:
            raise errors.pop(0)
        return result

    call.calls = 0  # type: ignore[attr-defined]
    return call


def retries(metrics: Metrics, dependency: str) -> float | None:
    return metrics.registry.get_sample_value("streamer_retries_total", {"dependency": dependency})


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry(), dependencies=("s3", "postgres", "kafka"))


POLICY = RetryPolicy(initial_backoff_ms=300, max_backoff_ms=30_000, max_attempts=5)


def test_backoff_ceiling_doubles_from_initial_and_is_capped() -> None:
    ceilings = [POLICY.backoff_s(n, Ceiling()) for n in range(1, 10)]
    assert ceilings == pytest.approx([0.3, 0.6, 1.2, 2.4, 4.8, 9.6, 19.2, 30.0, 30.0])
    assert POLICY.backoff_s(10_000, Ceiling()) == pytest.approx(30.0)


def test_backoff_is_full_jitter_within_bounds_and_reproducible_with_a_seed() -> None:
    rng = random.Random(7)
    for attempt in (1, 3, 6, 12):
        ceiling = min(30.0, 0.3 * 2 ** (attempt - 1))
        draws = [POLICY.backoff_s(attempt, rng) for _ in range(500)]
        assert all(0.0 <= d <= ceiling for d in draws)
        assert min(draws) < 0.1 * ceiling and max(draws) > 0.9 * ceiling, "spread over [0, cap]"
    first = [POLICY.backoff_s(4, random.Random(42)) for _ in range(3)]
    again = [POLICY.backoff_s(4, random.Random(42)) for _ in range(3)]
    assert first == again


def test_policy_from_settings_and_validation() -> None:
    from streamer.settings import Settings

    settings = Settings.load(
        None, retry_initial_backoff_ms=50, retry_max_backoff_ms=400, retry_max_attempts=7
    )
    assert RetryPolicy.from_settings(settings.runtime) == RetryPolicy(50, 400, 7)
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(max_attempts=0)


async def test_retries_retriable_errors_then_returns(metrics: Metrics) -> None:
    call = failing([DatabaseUnavailable("down"), DatabaseUnavailable("down")])
    sleep = Recorder()
    result = await retry_async(
        call, dependency="postgres", policy=POLICY, metrics=metrics, sleep=sleep
    )
    assert result == "ok"
    assert call.calls == 3  # type: ignore[attr-defined]
    assert len(sleep.delays) == 2
    assert all(0 <= d <= 0.6 for d in sleep.delays)
    assert retries(metrics, "postgres") == 2
    assert retries(metrics, "s3") == 0


async def test_gives_up_after_max_attempts_with_the_last_error(metrics: Metrics) -> None:
    errors: list[BaseException] = [DatabaseUnavailable(f"down {i}") for i in range(10)]
    call = failing(errors)
    sleep = Recorder()
    policy = RetryPolicy(initial_backoff_ms=10, max_backoff_ms=20, max_attempts=4)
    with pytest.raises(DatabaseUnavailable, match="down 3"):
        await retry_async(call, dependency="postgres", policy=policy, metrics=metrics, sleep=sleep)
    assert call.calls == 4  # type: ignore[attr-defined]
    assert len(sleep.delays) == 3
    assert retries(metrics, "postgres") == 3


async def test_non_retriable_errors_propagate_at_once(metrics: Metrics) -> None:
    call = failing([DatabaseDataError("bad row")])
    sleep = Recorder()
    with pytest.raises(DatabaseDataError):
        await retry_async(call, dependency="postgres", policy=POLICY, metrics=metrics, sleep=sleep)
    assert call.calls == 1  # type: ignore[attr-defined]
    assert sleep.delays == []
    assert retries(metrics, "postgres") == 0


async def test_foreign_exceptions_are_not_retried() -> None:
    call = failing([KeyError("bug")])
    sleep = Recorder()
    with pytest.raises(KeyError):
        await retry_async(call, dependency="s3", policy=POLICY, sleep=sleep)
    assert call.calls == 1  # type: ignore[attr-defined]
    assert sleep.delays == []


async def test_open_breaker_refuses_without_calling(metrics: Metrics) -> None:
    now = [0.0]
    breaker = CircuitBreaker("s3", failure_threshold=1, reset_timeout_s=5, clock=lambda: now[0])
    breaker.record_failure()
    call = failing([])
    with pytest.raises(CircuitOpenError) as info:
        await retry_async(call, dependency="s3", policy=POLICY, breaker=breaker, sleep=Recorder())
    assert call.calls == 0  # type: ignore[attr-defined]
    assert info.value.retry_after_s == pytest.approx(5.0)


async def test_stops_retrying_once_the_breaker_opens(metrics: Metrics) -> None:
    breaker = CircuitBreaker("s3", failure_threshold=2, reset_timeout_s=5, metrics=metrics)
    call = failing([ObjectStoreUnavailable("timeout") for _ in range(10)])
    sleep = Recorder()
    with pytest.raises(ObjectStoreUnavailable):
        await retry_async(
            call, dependency="s3", policy=POLICY, breaker=breaker, metrics=metrics, sleep=sleep
        )
    assert call.calls == 2  # type: ignore[attr-defined]
    assert breaker.state == "open"
    assert retries(metrics, "s3") == 1
    assert metrics.registry.get_sample_value("streamer_circuit_state", {"dependency": "s3"}) == 2


async def test_success_closes_a_half_open_breaker() -> None:
    now = [0.0]
    breaker = CircuitBreaker("s3", failure_threshold=1, reset_timeout_s=1, clock=lambda: now[0])
    breaker.record_failure()
    now[0] = 1.0
    assert await retry_async(failing([]), dependency="s3", policy=POLICY, breaker=breaker) == "ok"
    assert breaker.state == "closed"


async def test_non_retriable_answer_counts_as_the_dependency_being_up() -> None:
    now = [0.0]
    breaker = CircuitBreaker(
        "postgres", failure_threshold=1, reset_timeout_s=1, clock=lambda: now[0]
    )
    breaker.record_failure()
    now[0] = 1.0
    with pytest.raises(DatabaseDataError):
        await retry_async(
            failing([DatabaseDataError("bad")]),
            dependency="postgres",
            policy=POLICY,
            breaker=breaker,
        )
    assert breaker.state == "closed", "a half-open probe answered by the server must not wedge"


async def test_errors_of_another_dependency_do_not_trip_this_breaker() -> None:
    breaker = CircuitBreaker("s3", failure_threshold=1, reset_timeout_s=5)
    call = failing([DatabaseUnavailable("pg down"), ObjectStoreUnavailable("throttled")])
    sleep = Recorder()
    with pytest.raises(ObjectStoreUnavailable, match="throttled"):
        await retry_async(
            call,
            dependency="s3",
            policy=RetryPolicy(10, 10, 2),
            breaker=breaker,
            sleep=sleep,
        )
    # The PostgreSQL error did not count against S3; the S3 one did.
    assert breaker.state == "open"
    assert call.calls == 2  # type: ignore[attr-defined]


async def test_never_retries_sooner_than_the_dependency_asked(metrics: Metrics) -> None:
    asked = ObjectStoreUnavailable("slow down", retry_after_s=2.5)
    call = failing([asked, asked])
    sleep = Recorder()
    result = await retry_async(call, dependency="s3", policy=POLICY, metrics=metrics, sleep=sleep)
    assert result == "ok"
    assert sleep.delays == [2.5, 2.5], "the backoff (at most 0.6 s here) gives way to Retry-After"


async def test_a_wait_longer_than_the_largest_backoff_is_left_to_the_runner(
    metrics: Metrics,
) -> None:
    """Sleeping an hour inside a call would outlast max.poll.interval.ms: the error goes up
    at once, and the runner waits it out with its partitions paused, still polling."""
    asked = ObjectStoreUnavailable("come back in an hour", retry_after_s=3600)
    call = failing([asked])
    sleep = Recorder()
    with pytest.raises(ObjectStoreUnavailable) as info:
        await retry_async(call, dependency="s3", policy=POLICY, metrics=metrics, sleep=sleep)
    assert info.value.retry_after_s == 3600
    assert sleep.delays == []
    assert call.calls == 1  # type: ignore[attr-defined]


async def test_a_batch_the_runner_takes_again_is_not_retried_here() -> None:
    """A fenced or re-planned batch is retriable for the runner (it takes the batch again at
    once), not a dependency's failure to back off from: raised at once, breaker untouched."""
    breaker = CircuitBreaker("postgres", failure_threshold=1, reset_timeout_s=5)
    call = failing([StateChanged(["SKU-1"])])
    with pytest.raises(StateChanged):
        await retry_async(
            call, dependency="postgres", policy=POLICY, breaker=breaker, sleep=Recorder()
        )
    assert StateChanged.retriable and call.calls == 1  # type: ignore[attr-defined]
    assert breaker.state == "closed"


async def test_a_retry_is_counted_and_logged_against_the_dependency_that_failed(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    """A commit is PostgreSQL's call, but the publication inside it fails on Kafka: SREs
    must see Kafka's retries, not PostgreSQL's."""
    call = failing([BrokerUnavailable("the broker refused this batch's dead letters")])
    await retry_async(call, dependency="postgres", policy=POLICY, metrics=metrics, sleep=Recorder())
    assert (retries(metrics, "kafka"), retries(metrics, "postgres")) == (1, 0)
    assert "kafka failed (attempt 1 of 5)" in caplog.text
