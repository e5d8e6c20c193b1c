"""The checkpoint: how a batch's effects and its offsets land together, written once.

``Checkpoint.commit`` is the only place that knows the commit order; every job's
batches go through it. Its collaborators are small interfaces (a transaction
source that also stores fenced offsets, a producer), so its failure paths are
tested without servers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Hashable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol, TypeVar

import asyncpg

from streamer.runtime import tracing
from streamer.runtime.database import Database, converted
from streamer.runtime.errors import BrokerUnavailable, DatabaseDataError, DeliveryRefused
from streamer.runtime.faults import crash_point
from streamer.runtime.handler import Output

__all__ = ["Checkpoint", "NoOffsets", "Producer", "Transaction", "TransactionSource"]

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
TopicPartition = tuple[str, int]


class Transaction:
    """The batch's open transaction, as a handler writes through it."""

    def __init__(self, conn: asyncpg.Connection | Any) -> None:
        self.conn = conn

    @asynccontextmanager
    async def savepoint(self) -> Any:
        """A nested transaction: what fails inside rolls back alone."""
        async with converted(), self.conn.transaction():
            yield

    async def isolate(
        self, keys: Collection[K], write: Callable[[Collection[K]], Awaitable[None]]
    ) -> dict[K, DatabaseDataError]:
        """Write every key at once; if the database refuses, find the keys at fault.

        The whole write runs in one savepoint; only when it fails with a data error is
        each key written again in a savepoint of its own. Returns the keys whose data the
        database refused: the handler dead-letters them, the others are written.
        """
        if not keys:
            return {}
        try:
            async with self.savepoint():
                await write(keys)
            return {}
        except DatabaseDataError:
            log.warning("batch write refused by the database; isolating the key at fault")
        bad: dict[K, DatabaseDataError] = {}
        for key in keys:
            try:
                async with self.savepoint():
                    await write([key])
            except DatabaseDataError as exc:
                bad[key] = exc
        return bad


class TransactionSource(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[Transaction]: ...

    async def advance(
        self, tx: Transaction, offsets: Mapping[TopicPartition, tuple[int, int]]
    ) -> None: ...


class NoOffsets:
    """The transaction source where there are no offsets to fence: a queue (its messages
    are deleted after the commit) or a one-off run such as ``objects reconcile``."""

    def __init__(self, database: Database) -> None:
        self.database = database

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with converted(), self.database.acquire() as conn, conn.transaction():
            yield Transaction(conn)

    async def advance(
        self, tx: Transaction, offsets: Mapping[TopicPartition, tuple[int, int]]
    ) -> None:
        if offsets:
            raise ValueError("a source without offsets was asked to advance some")


class Producer(Protocol):
    def produce(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp_ms: int | None = None,
    ) -> None: ...

    def flush(self, timeout_s: float = 30.0) -> int: ...


class Checkpoint:
    """Commits one batch: the handler's writes, its publications and its offsets, in this order.

    1. Open one PostgreSQL transaction.
    2. Advance the batch's offsets, fenced by this worker's epoch: the row locks come
       first, so a new owner's claim waits for us; a partition claimed by another
       worker raises ``FencedError`` and nothing of the batch lands. (A queue has no
       offsets: its messages are deleted after the commit, by the source.)
    3. The handler's writes (``Handler.persist``). A data error isolated to one key is
       found with a savepoint per key (``Transaction.isolate``); the handler
       dead-letters that key and writes the others.
    4. Still inside the transaction, publish the dead letters and output messages and
       wait until the broker acknowledged every one of them, once, within the delivery
       timeout: a broker that does not acknowledge ends the attempt (the transaction
       rolls back) instead of holding it open through retries. Messages acknowledged by
       an earlier attempt at the same batch are not published again.
    5. Commit. Only now have the offsets passed the batch's messages.

    A crash or an error before 5 leaves the database as it was and the batch is
    consumed again; a message published in 4 may then be published twice (at least
    once, never lost; outputs carry ids for de-duplication downstream).
    """

    def __init__(
        self,
        store: TransactionSource,
        producer: Producer,
        *,
        dlq_topic: str,
        dlq_max_value_bytes: int,
        delivery_timeout_s: float,
    ) -> None:
        self.store = store
        self.producer = producer
        self.dlq_topic = dlq_topic
        self.dlq_max_value_bytes = dlq_max_value_bytes
        self.delivery_timeout_s = delivery_timeout_s
        # Acknowledged by the broker during an attempt at a batch that has not committed yet.
        self._acked: set[Hashable] = set()
        # Seconds each step of the last successful commit took (the runner logs them).
        self.timings: dict[str, float] = {}

    async def commit(
        self,
        offsets: Mapping[TopicPartition, tuple[int, int]],
        persist: Callable[[Transaction], Awaitable[Output]],
    ) -> Output:
        """``offsets``: (topic, partition) -> (next offset, epoch); ``persist``: the
        handler's writes, given the open transaction."""
        clock = time.perf_counter
        began = clock()
        with tracing.span("commit", {"streamer.partitions": len(offsets)}):
            async with self.store.transaction() as tx:  # 1
                await self.store.advance(tx, offsets)  # 2
                crash_point("after_offsets")
                wrote = clock()
                output = await persist(tx)  # 3
                published = clock()
                await self._publish_acknowledged(output)  # 4
                crash_point("after_publish")
                committing = clock()
        self._acked.clear()  # 5: committed on leaving the block
        self.timings = {
            "offsets": wrote - began,
            "write": published - wrote,
            "publish": committing - published,
            "commit": clock() - committing,
        }
        return output

    def forget(self) -> None:
        """The batch in hand was given up (a stop, a rebalance): a later batch publishes
        what it needs afresh."""
        self._acked.clear()

    async def _publish_acknowledged(self, output: Output) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._publish, output)
        except DeliveryRefused as exc:
            # Not the data's fault, and nothing to dead-letter it to: the batch waits,
            # paused and visible (circuit kafka open), until the topic accepts it.
            raise BrokerUnavailable(
                f"the broker refused this batch's dead letters or outputs: {exc.message}"
            ) from exc

    def _publish(self, output: Output) -> None:
        """Dead letters go out stamped now; their original's timestamp is a header. Stamped
        with the original's, an event that waited past the dead-letter topic's retention.ms
        would be deleted by the broker's next retention check, and a cluster that bounds
        timestamps (``message.timestamp.before.max.ms``) would refuse it outright."""
        sent: list[Hashable] = []
        for original in output.letters:
            if original.token in self._acked:
                continue
            letter = original.fitted(self.dlq_max_value_bytes)
            self.producer.produce(
                self.dlq_topic,
                letter.value,
                key=letter.key,
                headers=letter.kafka_headers(),
            )
            sent.append(original.token)
        for message in output.messages:
            if message.token in self._acked:
                continue
            self.producer.produce(
                message.topic, message.value, key=message.key, headers=message.headers
            )
            sent.append(message.token)
        if sent:
            self.producer.flush(timeout_s=self.delivery_timeout_s)
            self._acked.update(sent)
