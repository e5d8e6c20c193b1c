"""Throughput and lag of every job over the last hour, sampled by ``streamer serve`` itself.

No Prometheus needed for the console's charts: every ``STREAMER_API_SAMPLE_INTERVAL_S``
the sampler reads each job's committed positions (PostgreSQL) and ends (the broker)
and keeps an hour of them in memory. Throughput is the committed positions' growth
between two samples; lag is the ends minus the committed positions. Each ``serve``
replica samples for itself: the charts start when the process did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass

from streamer.errors import StreamerError
from streamer.ops.jobs import describe_jobs
from streamer.settings import Settings

__all__ = ["JobSampler", "Sample"]

log = logging.getLogger(__name__)
HOUR_S = 3600.0


@dataclass(frozen=True)
class Sample:
    at_s: float  # unix time
    committed: dict[str, int]  # job name -> sum of committed positions
    lag: dict[str, int]


class JobSampler:
    def __init__(self, settings: Settings, *, interval_s: float) -> None:
        self.settings = settings
        self.interval_s = interval_s
        self.samples: deque[Sample] = deque(maxlen=int(HOUR_S / interval_s) + 2)
        self.last_error: str | None = None

    async def sample(self) -> None:
        views = await describe_jobs(self.settings)
        self.samples.append(
            Sample(
                time.time(),
                {v.spec.name: v.committed for v in views},
                {v.spec.name: v.lag for v in views},
            )
        )

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sample()
                self.last_error = None
            except StreamerError as exc:
                self.last_error = str(exc)
                log.info("sampling the jobs: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)

    def throughput(self) -> dict[str, list[tuple[float, float]]]:
        """Messages committed per second by each job, between consecutive samples."""
        out: dict[str, list[tuple[float, float]]] = {}
        pairs = list(zip(list(self.samples)[:-1], list(self.samples)[1:], strict=True))
        for before, after in pairs:
            elapsed = max(after.at_s - before.at_s, 1e-6)
            for job, value in after.committed.items():
                rate = max(0, value - before.committed.get(job, value)) / elapsed
                out.setdefault(job, []).append((after.at_s, rate))
        return out

    def lag(self) -> dict[str, list[tuple[float, float]]]:
        out: dict[str, list[tuple[float, float]]] = {}
        for sample in self.samples:
            for job, value in sample.lag.items():
                out.setdefault(job, []).append((sample.at_s, float(value)))
        return out
