"""A consumer group's member as a source: partitions claimed, offsets fenced in PostgreSQL.

The confluent-kafka consumer runs on a thread of its own (``kafka.ConsumerThread``).
Assigned partitions are claimed with an epoch before anything is fetched from them
(``ownership.Owner``); a poll returns only messages of partitions this worker owns and
has not applied; the checkpoint advances the offsets fenced by those epochs; after the
commit the offsets are mirrored to Kafka, so standard lag tools see the group's progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import Message

from streamer.runtime.checkpoint import TransactionSource
from streamer.runtime.handler import Batch, TopicPartition
from streamer.runtime.kafka import ConsumerThread
from streamer.runtime.metrics import RuntimeMetrics
from streamer.runtime.ownership import OffsetStore, Owner
from streamer.runtime.settings import KafkaSettings
from streamer.runtime.source import SourceContext

__all__ = ["KafkaSource"]

log = logging.getLogger(__name__)


class KafkaSource:
    def __init__(self, kafka: KafkaSettings, group_id: str, *, claim_timeout_s: float) -> None:
        self.kafka = kafka
        self.group_id = group_id
        self.claim_timeout_s = claim_timeout_s
        self._generation = 0
        self._lag_series: set[TopicPartition] = set()
        self._owner: Owner | None = None
        self._consumer: ConsumerThread | None = None
        self._offsets: OffsetStore | None = None
        self._metrics: RuntimeMetrics | None = None
        self._ctx: SourceContext

    # -- what the runner reads -------------------------------------------------------------

    @property
    def store(self) -> TransactionSource:
        assert self._offsets is not None, "KafkaSource.attach() was not called"
        return self._offsets

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def paused(self) -> bool:
        return self._consumer is not None and self._consumer.paused

    @property
    def owner(self) -> Owner:
        assert self._owner is not None, "KafkaSource.start() was not called"
        return self._owner

    @property
    def consumer(self) -> ConsumerThread:
        assert self._consumer is not None, "KafkaSource.start() was not called"
        return self._consumer

    def config(self, client_id: str) -> dict[str, Any]:
        k = self.kafka
        return k.client_config(
            **k.group_config(self.group_id),
            **{
                "client.id": client_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": k.fetch_wait_max_ms,
                "max.poll.interval.ms": k.max_poll_interval_ms,
                "enable.partition.eof": False,
            },
        )

    # -- lifecycle -------------------------------------------------------------------------

    def attach(self, ctx: SourceContext) -> None:
        self._metrics = ctx.metrics
        self._offsets = OffsetStore(ctx.database, self.group_id, ctx.owner)
        self._ctx = ctx

    async def start(self, topics: Sequence[str]) -> None:
        ctx, loop = self._ctx, asyncio.get_running_loop()

        def changed(kind: str, partitions: Sequence[TopicPartition]) -> None:
            # On the Kafka thread, inside the poll: the generation moves before the poll
            # returns; the handler hears of it on the event loop, before that poll's batch.
            self._changed(kind)
            loop.call_soon_threadsafe(ctx.changed, kind, list(partitions))

        assert self._offsets is not None, "KafkaSource.attach() was not called"
        self._owner = Owner(
            self._offsets,
            claim_timeout_s=self.claim_timeout_s,
            claim_deadline_s=max(5.0, self.kafka.session_timeout_ms / 1000),
            on_change=changed,
        )
        self._owner.loop = loop
        self._consumer = ConsumerThread(self.config(ctx.owner), self._owner)
        await self._consumer.start(topics)

    async def close(self, timeout_s: float) -> None:
        if self._consumer is not None:
            await self._consumer.close(timeout_s=timeout_s)

    # -- batches ---------------------------------------------------------------------------

    async def poll(self, max_messages: int, wait_s: float) -> Batch:
        raw = await self.consumer.consume(max_messages, wait_s)
        partitions = self.owner.partitions
        if partitions.unclaimed:
            starts = await self.owner.claim_late()
            await self.consumer.resume_claimed(starts)
            self._update_gauges()
        return Batch(raw).keep(self.owns)

    def owns(self, msg: Message) -> bool:
        tp = (msg.topic() or "", msg.partition() or 0)
        return self.owner.partitions.owns(tp, msg.offset() or 0)

    def positions(self, batch: Batch) -> Mapping[TopicPartition, tuple[int, int]]:
        epochs = self.owner.partitions.epochs
        return {tp: (offset, epochs[tp]) for tp, offset in batch.next_offsets.items()}

    async def committed(self, batch: Batch) -> None:
        self.owner.partitions.passed(batch.next_offsets)
        await self.consumer.mirror_commit(batch.next_offsets)

    def fenced(self, partitions: Sequence[TopicPartition]) -> None:
        self.owner.fenced(partitions)

    # -- outages ---------------------------------------------------------------------------

    async def pause(self, paused: bool) -> None:
        await self.consumer.set_paused(list(self.owner.partitions.epochs), paused)
        self._update_gauges()

    async def idle(self, seconds: float) -> None:
        """Keep polling (partitions paused) so the group keeps this member; a message that
        arrives anyway (a partition assigned meanwhile) is sought back, to be fetched again."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            stray = await self.consumer.consume(
                100, min(0.2, max(0.01, deadline - time.monotonic()))
            )
            if stray:
                log.debug(
                    "%d messages arrived while paused; they will be fetched again", len(stray)
                )
                await self.consumer.seek_back(Batch(stray).keep(self.owns).messages)

    # -- health and lag ----------------------------------------------------------------------

    async def lag(self) -> dict[TopicPartition, int]:
        partitions = self.owner.partitions
        lags = await self.consumer.lag(list(partitions.epochs), dict(partitions.floors))
        metrics = self._metrics
        if metrics is not None:
            for (topic, partition), lag in lags.items():
                metrics.consumer_lag.labels(topic, str(partition)).set(lag)
                self._lag_series.add((topic, partition))
        return lags

    def not_ready(self) -> list[str]:
        if self._consumer is None or not self._consumer.started:
            return ["consumer not started"]
        if not self.owner.partitions.epochs:
            return ["no partitions assigned"]
        return []

    def _changed(self, kind: str) -> None:
        self._generation += 1
        metrics = self._metrics
        if metrics is None:
            return
        if kind != "fenced":
            metrics.rebalances.labels(kind).inc()
        if kind in ("revoke", "lost"):
            owned = set(self.owner.partitions.epochs)
            for topic, partition in self._lag_series - owned:
                with contextlib.suppress(KeyError):
                    metrics.consumer_lag.remove(topic, str(partition))
            self._lag_series &= owned
        self._update_gauges()

    def _update_gauges(self) -> None:
        metrics = self._metrics
        if metrics is None or self._owner is None:
            return
        owned = len(self._owner.partitions.epochs)
        metrics.assigned_partitions.set(owned)
        metrics.paused_partitions.set(owned if self.paused else 0)
