"""Circuit breaker transitions on a fake clock, with the gauge and the log following them."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from streamer.errors import DependencyUnavailable
from streamer.runtime.circuit import CircuitBreaker, CircuitOpenError
from streamer.runtime.metrics import RuntimeMetrics as Metrics

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def make(clock: FakeClock, metrics: Metrics | None = None) -> CircuitBreaker:
    return CircuitBreaker(
        "postgres", failure_threshold=3, reset_timeout_s=2.0, metrics=metrics, clock=clock
    )


def gauge(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("streamer_circuit_state", {"dependency": "postgres"})


def test_opens_only_after_threshold_consecutive_failures(clock: FakeClock) -> None:
    breaker = make(clock)
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_success()  # resets the count: failures must be consecutive
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed"
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    assert breaker.opened_count == 1


def test_open_refuses_until_reset_timeout_then_lets_exactly_one_probe(clock: FakeClock) -> None:
    breaker = make(clock)
    for _ in range(3):
        breaker.record_failure()
    assert not breaker.allow()
    assert breaker.retry_after_s() == pytest.approx(2.0)
    clock.advance(1.5)
    assert not breaker.allow()
    assert breaker.retry_after_s() == pytest.approx(0.5)
    clock.advance(0.5)
    assert breaker.allow()
    assert breaker.state == "half_open"
    assert not breaker.allow(), "a second caller must wait for the probe's outcome"


def test_probe_success_closes(clock: FakeClock) -> None:
    breaker = make(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(2.0)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.allow() and breaker.allow()
    breaker.record_failure()
    assert breaker.state == "closed", "the failure count started again from zero"


def test_probe_failure_reopens_and_restarts_the_timer(clock: FakeClock) -> None:
    breaker = make(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow()
    breaker.record_failure()  # one failed probe is enough, whatever the threshold
    assert breaker.state == "open"
    assert breaker.opened_count == 2
    assert breaker.retry_after_s() == pytest.approx(2.0)
    clock.advance(1.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()


def test_a_probe_whose_outcome_is_never_recorded_does_not_wedge_the_breaker(
    clock: FakeClock,
) -> None:
    breaker = make(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(2.0)
    assert breaker.allow()
    clock.advance(1.0)
    assert not breaker.allow()
    clock.advance(1.0)
    assert breaker.allow(), "after another reset timeout a new probe goes through"


def test_check_raises_a_retriable_error_naming_the_dependency(clock: FakeClock) -> None:
    breaker = make(clock)
    breaker.check()
    for _ in range(3):
        breaker.record_failure()
    clock.advance(0.5)
    with pytest.raises(CircuitOpenError) as info:
        breaker.check()
    err = info.value
    assert isinstance(err, DependencyUnavailable)
    assert err.retriable
    assert err.reason == "circuit_open"
    assert err.dependency == "postgres"
    assert err.retry_after_s == pytest.approx(1.5)
    assert "postgres" in str(err)


def test_gauge_and_log_follow_every_transition(
    clock: FakeClock, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = make(clock, metrics)
    assert gauge(metrics) == 0
    with caplog.at_level(logging.INFO, logger="streamer.circuit"):
        for _ in range(3):
            breaker.record_failure()
        assert gauge(metrics) == 2
        clock.advance(2.0)
        breaker.allow()
        assert gauge(metrics) == 1
        breaker.record_failure()
        assert gauge(metrics) == 2
        clock.advance(2.0)
        breaker.allow()
        breaker.record_success()
        assert gauge(metrics) == 0
    assert [r.getMessage() for r in caplog.records] == [
        "circuit postgres: closed -> open",
        "circuit postgres: open -> half_open",
        "circuit postgres: half_open -> open",
        "circuit postgres: open -> half_open",
        "circuit postgres: half_open -> closed",
    ]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"failure_threshold": 0}, "failure_threshold"), ({"reset_timeout_s": 0}, "reset_timeout_s")],
)
def test_nonsense_settings_are_refused(kwargs: dict[str, float], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        CircuitBreaker("s3", **kwargs)  # type: ignore[arg-type]
