"""The chaos campaign's crash points: off unless asked for, repeatable when seeded."""

from __future__ import annotations

import pytest

from streamer.runtime.faults import CrashPoints

pytestmark = pytest.mark.unit


def draws(points: CrashPoints, point: str, n: int) -> list[int]:
    killed: list[int] = []
    for i in range(n):
        before = len(killed)
        points._kill = lambda i=i: killed.append(i)
        points.reached(point)
        assert len(killed) - before in (0, 1)
    return killed


def test_points_not_asked_for_never_fire() -> None:
    points = CrashPoints({})
    assert draws(points, "after_offsets", 1000) == []


def test_a_seeded_point_fires_at_the_same_batches_every_time() -> None:
    first = draws(CrashPoints({"after_publish": 0.1}, seed=7), "after_publish", 500)
    again = draws(CrashPoints({"after_publish": 0.1}, seed=7), "after_publish", 500)
    assert first == again and 20 < len(first) < 90
    assert draws(CrashPoints({"after_publish": 0.1}, seed=7), "after_offsets", 500) == []


def test_an_unknown_point_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMER_TEST_CRASH_POINTS", "after_offsets:0.5,before_lunch:1")
    with pytest.raises(ValueError, match="before_lunch"):
        CrashPoints.from_env()
    monkeypatch.setenv("STREAMER_TEST_CRASH_POINTS", "after_offsets:0.5, after_publish:0.25")
    assert CrashPoints.from_env().probabilities == {"after_offsets": 0.5, "after_publish": 0.25}
