"""Partition ownership: claimed on assignment with an epoch, offsets stored fenced in PostgreSQL.

``consumer_offsets`` is the source of truth for consumed positions. A worker that
is assigned a partition claims it: the epoch goes up by one and the stored offset
is where consumption resumes. Every batch advances its offsets only where the
epoch is still the one this worker claimed, in the same transaction as the
job's writes, so a worker that lost a partition can no longer commit for it.
``Partitions`` is this worker's view: what it owns, at which epoch, and the
first offset not yet applied.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from streamer.errors import StreamerError
from streamer.runtime.checkpoint import Transaction
from streamer.runtime.database import Database, converted
from streamer.runtime.errors import FencedError

__all__ = ["OffsetClaim", "OffsetStore", "Owner", "Partitions", "TopicPartition"]

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]

_CLAIM = """
INSERT INTO consumer_offsets (group_id, topic, partition, epoch, owner)
SELECT $1, t, p, 1, $2 FROM unnest($3::text[], $4::int[]) AS u(t, p)
ON CONFLICT (group_id, topic, partition) DO UPDATE SET
    epoch = consumer_offsets.epoch + 1, owner = EXCLUDED.owner, updated_at = now()
RETURNING topic, partition, next_offset, epoch
"""
_ADVANCE = """
UPDATE consumer_offsets o SET next_offset = u.next_offset, updated_at = now()
FROM unnest($2::text[], $3::int[], $4::bigint[], $5::bigint[]) AS u(topic, partition, next_offset, epoch)
WHERE o.group_id = $1 AND o.topic = u.topic AND o.partition = u.partition AND o.epoch = u.epoch
RETURNING o.topic, o.partition
"""


@dataclass(frozen=True, slots=True)
class OffsetClaim:
    topic: str
    partition: int
    next_offset: int  # -1: nothing stored
    epoch: int


class OffsetStore:
    def __init__(self, database: Database, group_id: str, owner: str) -> None:
        self.database = database
        self.group_id = group_id
        self.owner = owner

    async def claim(self, partitions: Sequence[TopicPartition]) -> list[OffsetClaim]:
        """Take ownership of newly assigned partitions: bump their epoch and read their offsets.

        The UPDATE waits for a previous owner's open batch transaction on the same
        rows, so the offsets read here include everything it committed.
        """
        if not partitions:
            return []
        async with self.database.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                _CLAIM,
                self.group_id,
                self.owner,
                [t for t, _ in partitions],
                [p for _, p in partitions],
            )
        return [OffsetClaim(r["topic"], r["partition"], r["next_offset"], r["epoch"]) for r in rows]

    async def stored(self) -> dict[TopicPartition, int]:
        rows = await self.database.fetch(
            "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = $1",
            self.group_id,
        )
        return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """The batch's transaction: committed when the block ends, rolled back if it raises."""
        async with self.database.acquire() as conn, conn.transaction():
            yield Transaction(conn)

    async def advance(
        self, tx: Transaction, offsets: Mapping[TopicPartition, tuple[int, int]]
    ) -> None:
        """Set next offsets where this worker still holds the epoch; raise FencedError otherwise.

        offsets: (topic, partition) -> (next_offset, epoch). Run inside the batch's
        transaction: the row locks taken here make a new owner's claim wait for us.
        """
        if not offsets:
            return
        keys = list(offsets)
        async with converted():
            rows = await tx.conn.fetch(
                _ADVANCE,
                self.group_id,
                [t for t, _ in keys],
                [p for _, p in keys],
                [offsets[k][0] for k in keys],
                [offsets[k][1] for k in keys],
            )
        lost = sorted(set(keys) - {(r["topic"], r["partition"]) for r in rows})
        if lost:
            raise FencedError(lost)


@dataclass
class Partitions:
    """This worker's partitions: owned ones with their epoch, and claims still to make."""

    epochs: dict[TopicPartition, int] = field(default_factory=dict)
    floors: dict[TopicPartition, int] = field(default_factory=dict)
    unclaimed: set[TopicPartition] = field(default_factory=set)

    def own(self, claim: OffsetClaim) -> None:
        tp = (claim.topic, claim.partition)
        self.unclaimed.discard(tp)
        self.epochs[tp] = claim.epoch
        self.floors[tp] = claim.next_offset

    def drop(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self.unclaimed.discard(tp)
            self.epochs.pop(tp, None)
            self.floors.pop(tp, None)

    def owns(self, tp: TopicPartition, offset: int) -> bool:
        """Whether a message at ``offset`` is ours to apply (owned, and not applied before)."""
        return tp in self.epochs and offset >= self.floors.get(tp, -1)

    def passed(self, next_offsets: Mapping[TopicPartition, int]) -> None:
        """A batch committed: its messages will not be applied again by this worker."""
        for tp, offset in next_offsets.items():
            if tp in self.epochs:
                self.floors[tp] = offset


class Owner:
    """Keeps ``Partitions`` true to what Kafka assigns: the runtime's rebalance listener.

    ``on_assign`` and ``on_revoke`` run on the Kafka thread inside ``consume()``. A
    claim runs on the event loop (the pool lives there) while the Kafka thread waits,
    so a partition is never fetched from a position the database does not vouch for;
    partitions whose claim fails are taken paused and claimed later (``claim_late``).
    """

    def __init__(
        self,
        store: OffsetStore,
        *,
        claim_timeout_s: float,
        claim_deadline_s: float,
        on_change: Callable[[str, Sequence[TopicPartition]], None],
    ) -> None:
        self.store = store
        self.partitions = Partitions()
        self.claim_timeout_s = claim_timeout_s
        self.claim_deadline_s = claim_deadline_s
        # called with "assign", "revoke", "lost" or "fenced" and the partitions
        self.on_change = on_change
        self.loop: asyncio.AbstractEventLoop | None = None

    def on_assign(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int] | None:
        assert self.loop is not None, "Owner.loop is set before the consumer starts"
        deadline = time.monotonic() + self.claim_deadline_s
        while True:
            future = asyncio.run_coroutine_threadsafe(self.store.claim(partitions), self.loop)
            try:
                claims = future.result(timeout=self.claim_timeout_s)
                break
            except (StreamerError, TimeoutError) as exc:
                future.cancel()
                if time.monotonic() > deadline:
                    log.warning(
                        "could not claim assigned partitions yet (%s); holding them paused", exc
                    )
                    self.partitions.unclaimed.update(partitions)
                    self.on_change("assign", partitions)
                    return None
                log.warning("claiming partitions failed, retrying: %s", exc)
                time.sleep(0.5)
        for claim in claims:
            self.partitions.own(claim)
        self.on_change("assign", partitions)
        return {(c.topic, c.partition): c.next_offset for c in claims}

    def on_revoke(self, partitions: list[TopicPartition], kind: str) -> None:
        self.partitions.drop(partitions)
        log.info("%s %s", kind, ", ".join(f"{t}[{p}]" for t, p in partitions))
        self.on_change(kind, partitions)

    def fenced(self, partitions: Sequence[TopicPartition]) -> None:
        """Another worker claimed these: treat them as revoked until the group says otherwise."""
        self.partitions.drop(partitions)
        self.on_change("fenced", partitions)

    async def claim_late(self) -> dict[TopicPartition, int]:
        """Claim partitions held paused since a failed claim; returns where to resume them."""
        try:
            claims = await self.store.claim(sorted(self.partitions.unclaimed))
        except StreamerError as exc:
            log.debug("late claim still failing: %s", exc)
            return {}
        starts = {}
        for claim in claims:
            if (claim.topic, claim.partition) in self.partitions.unclaimed:
                self.partitions.own(claim)
                starts[(claim.topic, claim.partition)] = claim.next_offset
        return starts
