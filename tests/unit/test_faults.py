"""The chaos campaign's crash points: off unless asked for, repeatable when seeded."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from streamer.runtime import faults
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


def test_the_variable_alone_arms_nothing_at_import() -> None:
    """A deployment that carries the variable by accident: importing the module (as every
    worker does) and passing a point leaves the process alive. In a child process, so that
    a failure kills the child, not the test run."""
    code = (
        "from streamer.runtime import faults\n"
        "faults.crash_point('after_offsets'); faults.crash_point('after_publish')\n"
        "print('alive', faults.armed())\n"
    )
    env = {**os.environ, "STREAMER_TEST_CRASH_POINTS": "after_offsets:1.0,after_publish:1.0"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().split() == ["alive", "False"]


def test_armed_at_start_from_the_variable_and_announced_loudly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("STREAMER_TEST_CRASH_POINTS", "after_offsets:1.0")
    monkeypatch.setattr(faults, "_points", CrashPoints({}))
    with caplog.at_level(logging.WARNING, logger="streamer.runtime.faults"):
        faults.announce()
    assert "set but ignored" in caplog.text and "ARMED" not in caplog.text
    assert not faults.armed()

    caplog.clear()
    points = faults.arm_from_env()
    killed: list[str] = []
    points._kill = lambda: killed.append("killed")
    with caplog.at_level(logging.WARNING, logger="streamer.runtime.faults"):
        faults.announce()
        faults.crash_point("after_offsets")
    assert "TEST CRASH POINTS ARMED (after_offsets:1)" in caplog.text
    assert killed == ["killed"]


def test_nothing_announced_when_nothing_is_asked(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("STREAMER_TEST_CRASH_POINTS", raising=False)
    monkeypatch.setattr(faults, "_points", CrashPoints({}))
    with caplog.at_level(logging.DEBUG, logger="streamer.runtime.faults"):
        faults.announce()
    assert caplog.text == ""
