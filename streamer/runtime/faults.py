"""Test-only crash points inside the commit window, for the reliability campaign.

``STREAMER_TEST_CRASH_POINTS="after_offsets:0.05,after_publish:0.05"`` makes a worker
kill itself with SIGKILL, with that probability per batch, at a point of
``Checkpoint.commit`` that ordinary faults rarely hit: after the fenced offsets are
written, and after the outputs are acknowledged, each before COMMIT.
``STREAMER_TEST_CRASH_SEED`` makes the draws repeatable. Unset (always, outside the
chaos harness), a crash point costs one dictionary look-up.
"""

from __future__ import annotations

import logging
import os
import random
import signal
from collections.abc import Callable

__all__ = ["POINTS", "CrashPoints", "crash_point"]

log = logging.getLogger(__name__)

POINTS = ("after_offsets", "after_publish")


class CrashPoints:
    def __init__(
        self,
        probabilities: dict[str, float],
        *,
        seed: int | None = None,
        kill: Callable[[], None] | None = None,
    ) -> None:
        unknown = set(probabilities) - set(POINTS)
        if unknown:
            raise ValueError(f"unknown crash points {sorted(unknown)}; known: {POINTS}")
        self.probabilities = probabilities
        self._rng = random.Random(seed)
        self._kill = kill or (lambda: os.kill(os.getpid(), signal.SIGKILL))

    @classmethod
    def from_env(cls) -> CrashPoints:
        spec = os.environ.get("STREAMER_TEST_CRASH_POINTS", "")
        seed = os.environ.get("STREAMER_TEST_CRASH_SEED")
        probabilities = {
            name.strip(): float(p)
            for name, _, p in (item.partition(":") for item in spec.split(",") if item.strip())
        }
        return cls(probabilities, seed=int(seed) if seed else None)

    def reached(self, point: str) -> None:
        p = self.probabilities.get(point)
        if p and self._rng.random() < p:
            log.warning("test crash point %s reached: killing this worker", point)
            logging.shutdown()
            self._kill()


_points = CrashPoints.from_env()


def crash_point(point: str) -> None:
    _points.reached(point)
