"""What a chaos run planned to break, and what actually broke: a run whose faults never
fired proves nothing, so a planned kind that fired none fails the run.

Faults are planned by the seeded schedule (and the broker restart between the phases);
each is counted as fired once it was done, or as not fired with the reason (no worker to
kill, a group that never settled for a leave). Crash points fire inside worker processes:
a worker that dies by SIGKILL it did not receive from the run says, in its last log
line, which point killed it (``streamer.runtime.faults``); a SIGKILL without that line
is a death nobody planned, and fails the run too.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CRASH_POINTS", "FAULT_KINDS", "Tally", "crash_point_in"]

FAULT_KINDS = ("kill", "join", "leave", "s3", "postgres", "webhook", "broker")
CRASH_POINTS = ("after_offsets", "after_publish")
_MARKER = re.compile(rb"test crash point (\w+) reached")


def crash_point_in(log: Path) -> str | None:
    """The crash point a worker's log says killed it, if any (the last one named)."""
    try:
        found = _MARKER.findall(log.read_bytes())
    except OSError:
        return None
    return found[-1].decode() if found else None


@dataclass
class Tally:
    planned: Counter[str] = field(default_factory=Counter)
    fired: Counter[str] = field(default_factory=Counter)
    fired_on: dict[str, Counter[str]] = field(default_factory=dict)  # kind -> job -> count
    missed: dict[str, list[str]] = field(default_factory=dict)  # kind -> why not fired
    armed: Counter[str] = field(default_factory=Counter)  # crash point -> workers armed
    crashes: Counter[str] = field(default_factory=Counter)  # crash point -> times it fired
    crashed_jobs: dict[str, Counter[str]] = field(default_factory=dict)
    unexplained: list[str] = field(default_factory=list)  # SIGKILLs nobody planned

    def plan(self, kind: str) -> None:
        self.planned[kind] += 1

    def fire(self, kind: str, job: str | None = None) -> None:
        self.fired[kind] += 1
        if job is not None:
            self.fired_on.setdefault(kind, Counter())[job] += 1

    def miss(self, kind: str, why: str) -> None:
        self.missed.setdefault(kind, []).append(why)

    def arm(self, points: list[str]) -> None:
        self.armed.update(points)

    def crashed(self, point: str | None, worker: str, job: str) -> None:
        if point is None:
            self.unexplained.append(worker)
            return
        self.crashes[point] += 1
        self.crashed_jobs.setdefault(point, Counter())[job] += 1

    def problems(self) -> list[str]:
        problems = [
            f"planned fault '{kind}' fired none of {n}: {'; '.join(self.missed.get(kind, []))}"
            for kind, n in self.planned.items()
            if n and not self.fired[kind]
        ]
        problems += [
            f"crash point {point} armed in {n} workers, fired none"
            for point, n in self.armed.items()
            if n and not self.crashes[point]
        ]
        if self.unexplained:
            problems.append(f"killed by a SIGKILL nobody planned: {self.unexplained}")
        return problems

    def table(self, seconds: float) -> list[str]:
        """One row per fault kind and crash point: planned, fired (by job), not fired."""
        rows = [f"  {'fault':<14}{'planned':>8}{'fired':>7}  by job / not fired"]
        for kind in FAULT_KINDS:
            jobs = ", ".join(f"{j} {n}" for j, n in sorted(self.fired_on.get(kind, {}).items()))
            missed = "; ".join(self.missed.get(kind, []))
            note = " | ".join(x for x in (jobs, f"not fired: {missed}" if missed else "") if x)
            rows.append(f"  {kind:<14}{self.planned[kind]:>8}{self.fired[kind]:>7}  {note}")
        rows.append(f"  {'crash point':<14}{'armed':>8}{'fired':>7}  by job")
        for point in CRASH_POINTS:
            jobs = ", ".join(
                f"{j} {n}" for j, n in sorted(self.crashed_jobs.get(point, {}).items())
            )
            rows.append(f"  {point:<14}{self.armed[point]:>8}{self.crashes[point]:>7}  {jobs}")
        rows.append(f"  time {seconds:.0f} s")
        return rows

    def row(self, seed: int, seconds: float) -> str:
        """The run on one line: fired/planned per kind, crash points, time."""
        faults = " ".join(f"{k} {self.fired[k]}/{self.planned[k]}" for k in FAULT_KINDS)
        crashes = " ".join(f"{p} {self.crashes[p]}" for p in CRASH_POINTS)
        return f"| {seed} | {faults} | {crashes} | {seconds:.0f} s |"
