"""Bookkeeping kept for a bounded time: the pruner, a background task of every worker.

Bookkeeping tables (what became of each event, each bulk item, each request, each
replay) gain rows with every changed event and nothing else removes them. Each has a
``Retention``: its rows older than ``days`` (0: kept forever) are deleted in small
batches, each its own short transaction, locked ``SKIP LOCKED`` so a row the hot path
holds is left for the next round, with a pause between batches three times as long as the
batch took, so the pruner never takes more than a quarter of one pooled connection (and of
one PostgreSQL backend), even while it works through a backlog. Several
workers prune the same tables safely: a transaction-level advisory lock per table lets
one of them at a time do it, the others skip it for that round.

The rules (which rows, in which order) belong to the tables' owners and are handed in;
the runtime only runs them. ``Pruner.run`` is the supervised loop: started and stopped
by whoever owns the database pool (the runner, the SQS source, ``streamer serve``); an
outage is waited out until the next round, an unexpected error logged with its
traceback and retried next round, never silently ending the task.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, Counter, Gauge

from streamer.errors import DependencyUnavailable
from streamer.runtime.database import Database

__all__ = ["Pruner", "Pruning", "Retention", "RetentionMetrics", "pruner_for"]

log = logging.getLogger(__name__)

_REST = 3.0  # pause after a full batch, in multiples of the time it took


@dataclass(frozen=True)
class Retention:
    """One bookkeeping table's rule.

    ``statements`` run in order, each repeated until it deletes fewer rows than asked:
    ``$1`` is the cutoff (rows older than it go), ``$2`` how many rows at most. Each
    picks its rows ``ORDER BY <age> LIMIT $2 FOR UPDATE SKIP LOCKED`` and returns
    PostgreSQL's ``DELETE n`` status.
    """

    table: str
    setting: str  # the variable that sets ``days``, for logs
    days: float
    statements: tuple[str, ...]

    @property
    def keeps_forever(self) -> bool:
        return self.days <= 0


@dataclass(frozen=True)
class Pruning:
    """What a process prunes, and how it paces itself: built at the edge, handed in."""

    rules: Sequence[Retention]
    interval_s: float = 300.0
    batch_rows: int = 1000


class RetentionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.deleted = Counter(
            "streamer_retention_deleted_rows_total",
            "Bookkeeping rows deleted because they outlived their table's retention, by table",
            ["table"],
            registry=registry,
        )
        self.last_round = Gauge(
            "streamer_retention_last_round_timestamp_seconds",
            "Unix time the pruner last went through every table with a retention",
            registry=registry,
        )


def _lock_key(table: str) -> int:
    digest = hashlib.sha256(f"streamer.retention:{table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Pruner:
    def __init__(
        self,
        database: Database,
        rules: Sequence[Retention],
        *,
        interval_s: float = 300.0,
        batch_rows: int = 1000,
        metrics: RetentionMetrics | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.database = database
        self.rules = [r for r in rules if not r.keeps_forever]
        self.interval_s = interval_s
        self.batch_rows = batch_rows
        self.metrics = metrics
        self._now = now
        self.rounds = 0

    async def prune(self) -> dict[str, int]:
        """One round: every table's rows past its retention, batch by batch; rows deleted by table."""
        deleted: dict[str, int] = {}
        for rule in self.rules:
            cutoff = self._now() - timedelta(days=rule.days)
            n = 0
            for statement in rule.statements:
                while True:
                    started = time.monotonic()
                    got = await self._batch(rule.table, statement, cutoff)
                    if got is None:  # another worker prunes this table now
                        break
                    n += got
                    if self.metrics is not None and got:
                        self.metrics.deleted.labels(rule.table).inc(got)
                    if got < self.batch_rows:
                        break
                    # Three times as long as the batch took: at most a quarter of one
                    # connection (and of one PostgreSQL backend), even through a backlog.
                    await asyncio.sleep(max(0.01, _REST * (time.monotonic() - started)))
            deleted[rule.table] = n
        self.rounds += 1
        if any(deleted.values()):
            log.info(
                "retention: deleted %s",
                ", ".join(
                    f"{n} rows of {r.table} (older than {r.days:g} days, {r.setting})"
                    for r in self.rules
                    if (n := deleted.get(r.table, 0))
                ),
            )
        if self.metrics is not None:
            self.metrics.last_round.set(time.time())
        return deleted

    async def _batch(self, table: str, statement: str, cutoff: datetime) -> int | None:
        async with self.database.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _lock_key(table)):
                return None
            status = await conn.execute(statement, cutoff, self.batch_rows)
        return int(status.split()[-1])

    async def run(self) -> None:
        """Prune every ``interval_s`` until cancelled; the first round after a random part
        of the first interval (at most a minute), so workers started together spread out."""
        if not self.rules:
            return
        await asyncio.sleep(random.uniform(0, min(self.interval_s, 60.0)))
        while True:
            try:
                await self.prune()
            except DependencyUnavailable as exc:
                log.warning("retention: pruning waits for the next round: %s", exc)
            except Exception:
                log.exception("retention: pruning failed; retried next round")
            await asyncio.sleep(self.interval_s)


def pruner_for(
    pruning: Pruning | None, database: Database, registry: CollectorRegistry
) -> Pruner | None:
    """The pruner a process runs (None: nothing to prune): its ``run`` is a background task
    of whoever owns the database pool (the runner supervises it, ``streamer serve`` too),
    cancelled before the pool closes."""
    if pruning is None or not any(not r.keeps_forever for r in pruning.rules):
        return None
    return Pruner(
        database,
        pruning.rules,
        interval_s=pruning.interval_s,
        batch_rows=pruning.batch_rows,
        metrics=RetentionMetrics(registry),
    )
