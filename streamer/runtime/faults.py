"""Test-only crash points inside the commit window, for the reliability campaign.

``STREAMER_TEST_CRASH_POINTS="after_offsets:0.05,after_publish:0.05"`` names points of
``Checkpoint.commit`` that ordinary faults rarely hit (after the fenced offsets are
written, and after the outputs are acknowledged, each before COMMIT) and the
probability per batch that a worker kills itself there with SIGKILL;
``STREAMER_TEST_CRASH_SEED`` makes the draws repeatable.

The variable alone arms nothing: a deployment that carries it by accident (a copied
manifest, a leftover in a ConfigMap) must not kill its workers inside the commit
window. The points are armed only when the process is also started with the hidden
flag ``streamer --arm-test-crash-points …``, which only the test harnesses pass; the
variable is read then, at start, never at import. ``announce`` logs at start what the
process does with them: a loud warning when armed, a plain one when the variable is set
and ignored. Unarmed, a crash point costs one dictionary look-up.
"""

from __future__ import annotations

import logging
import os
import random
import signal
from collections.abc import Callable, Mapping

__all__ = [
    "ARM_FLAG",
    "POINTS",
    "CrashPoints",
    "announce",
    "arm_from_env",
    "armed",
    "crash_point",
]

log = logging.getLogger(__name__)

POINTS = ("after_offsets", "after_publish")
ARM_FLAG = "--arm-test-crash-points"
_SPEC_VARIABLE = "STREAMER_TEST_CRASH_POINTS"
_SEED_VARIABLE = "STREAMER_TEST_CRASH_SEED"


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
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CrashPoints:
        env = os.environ if environ is None else environ
        spec = env.get(_SPEC_VARIABLE, "")
        seed = env.get(_SEED_VARIABLE)
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


_points = CrashPoints({})


def arm_from_env(environ: Mapping[str, str] | None = None) -> CrashPoints:
    """Arm the points ``STREAMER_TEST_CRASH_POINTS`` names; only the hidden flag calls this."""
    global _points
    _points = CrashPoints.from_env(environ)
    return _points


def armed() -> bool:
    return bool(_points.probabilities)


def announce() -> None:
    """Say at start whether this process may kill itself on purpose."""
    if armed():
        shown = ", ".join(f"{k}:{v:g}" for k, v in sorted(_points.probabilities.items()))
        log.warning(
            "TEST CRASH POINTS ARMED (%s): this worker will SIGKILL itself inside the commit "
            "window on purpose. Only the test harness runs workers like this; in any other "
            "deployment remove %s and the %s flag",
            shown,
            _SPEC_VARIABLE,
            ARM_FLAG,
        )
    elif os.environ.get(_SPEC_VARIABLE, "").strip():
        log.warning(
            "%s is set but ignored: test crash points are armed only by the test harness's "
            "own flag",
            _SPEC_VARIABLE,
        )


def crash_point(point: str) -> None:
    _points.reached(point)
