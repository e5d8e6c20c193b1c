"""The consumer-group worker: poll batches, hand them to the pipeline, survive rebalances and outages.

The confluent-kafka consumer is not thread-safe, so every call to it runs on one
dedicated thread; the event loop (uvloop) owns everything else. Rebalance
callbacks run on that thread inside ``consume()`` and claim the new partitions
in PostgreSQL there (bumping their epoch, reading their offsets), so a
partition is never fetched from a position the database does not vouch for.

While a dependency is down, the worker keeps the batch in hand, pauses every
assigned partition and keeps polling (so it stays in the group), then retries
the same batch when the circuit breaker lets a probe through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from prometheus_client import CollectorRegistry

from streamer.circuit import CircuitBreaker
from streamer.codec import Codec
from streamer.config import Settings
from streamer.db import Database, OffsetClaim
from streamer.errors import DependencyUnavailable, FencedError, StreamerError
from streamer.etags import EtagSource, make_etag_source
from streamer.health import HealthServer, Readiness
from streamer.metrics import Metrics
from streamer.pipeline import BatchReport, Pipeline
from streamer.publisher import Publisher

__all__ = ["Worker", "WorkerStats"]

log = logging.getLogger(__name__)

TP = tuple[str, int]


@dataclass
class WorkerStats:
    batches: int = 0
    report: BatchReport = field(default_factory=BatchReport)
    rebalances: int = 0
    fenced_batches: int = 0
    outage_waits: int = 0


class Worker:
    """One member of the consumer group. ``await run(stop)`` until ``stop`` is set or a signal arrives."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        etags: EtagSource | None = None,
        install_signal_handlers: bool = True,
    ) -> None:
        self.settings = settings
        self.metrics = (
            metrics if metrics is not None else Metrics(CollectorRegistry(auto_describe=True))
        )
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stats = WorkerStats()
        self._etags = etags
        self._install_signals = install_signal_handlers
        self._kafka = ThreadPoolExecutor(1, thread_name_prefix="kafka")
        self._consumer: Consumer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._db: Database | None = None
        self._assigned: dict[TP, int] = {}  # partition -> epoch
        self._floor: dict[TP, int] = {}  # partition -> first offset not yet applied
        self._unclaimed: set[TP] = set()
        self._paused = False
        self._heartbeat = time.monotonic()
        self._stopping = asyncio.Event()
        self.health_port: int | None = None
        self.breakers = {
            dep: CircuitBreaker(
                dep,
                failure_threshold=settings.circuit_failure_threshold,
                reset_timeout_s=settings.circuit_reset_timeout_s,
                metrics=self.metrics,
            )
            for dep in ("s3", "postgres")
        }

    # -- Kafka thread ----------------------------------------------------------

    async def _k(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._kafka, fn, *args)

    def _consumer_config(self) -> dict[str, Any]:
        s = self.settings
        return s.kafka_config(
            **{
                "group.id": s.group_id,
                "client.id": self.owner,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "cooperative-sticky",
                "fetch.wait.max.ms": s.fetch_wait_max_ms,
                "session.timeout.ms": s.session_timeout_ms,
                "heartbeat.interval.ms": max(100, s.session_timeout_ms // 6),
                "max.poll.interval.ms": s.max_poll_interval_ms,
                "enable.partition.eof": False,
            }
        )

    def _claim(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """Claim partitions in PostgreSQL (epoch + 1) and return them positioned at the stored offsets."""
        assert self._loop is not None and self._db is not None
        wanted = [(tp.topic, tp.partition) for tp in partitions]
        deadline = time.monotonic() + max(5.0, self.settings.session_timeout_ms / 1000)
        while True:
            future = asyncio.run_coroutine_threadsafe(
                self._db.claim_partitions(self.settings.group_id, self.owner, wanted), self._loop
            )
            try:
                claims = future.result(timeout=self.settings.database_timeout_s * 2)
                break
            except (StreamerError, TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("claiming partitions failed, retrying: %s", exc)
                time.sleep(0.5)
        positioned = []
        for claim in claims:
            self._own(claim)
            offset = claim.next_offset if claim.next_offset >= 0 else OFFSET_INVALID
            positioned.append(TopicPartition(claim.topic, claim.partition, offset))
        return positioned

    def _own(self, claim: OffsetClaim) -> None:
        tp = (claim.topic, claim.partition)
        self._assigned[tp] = claim.epoch
        self._floor[tp] = claim.next_offset

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("assign").inc()
        self.stats.rebalances += 1
        try:
            positioned = self._claim(partitions)
        except StreamerError as exc:
            # Take them, but paused: nothing is fetched until the database vouches for a position.
            log.warning("could not claim assigned partitions yet (%s); holding them paused", exc)
            consumer.incremental_assign(partitions)
            consumer.pause(partitions)
            self._unclaimed.update((tp.topic, tp.partition) for tp in partitions)
            return
        consumer.incremental_assign(positioned)
        if self._paused:
            consumer.pause(positioned)
        log.info(
            "assigned %s", ", ".join(f"{t.topic}[{t.partition}]@{t.offset}" for t in positioned)
        )
        self._update_partition_gauges()

    def _on_revoke(
        self, consumer: Consumer, partitions: list[TopicPartition], kind: str = "revoke"
    ) -> None:
        self.metrics.rebalances.labels(kind).inc()
        self.stats.rebalances += 1
        for tp in partitions:
            self._unclaimed.discard((tp.topic, tp.partition))
            self._assigned.pop((tp.topic, tp.partition), None)
            self._floor.pop((tp.topic, tp.partition), None)
            with contextlib.suppress(KeyError, ValueError):
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        log.info("%s %s", kind, ", ".join(f"{t.topic}[{t.partition}]" for t in partitions))
        self._update_partition_gauges()

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._on_revoke(consumer, partitions, kind="lost")

    def _update_partition_gauges(self) -> None:
        self.metrics.assigned_partitions.set(len(self._assigned))
        self.metrics.paused_partitions.set(len(self._assigned) if self._paused else 0)

    def _set_paused(self, paused: bool) -> None:
        assert self._consumer is not None
        parts = [TopicPartition(t, p) for t, p in self._assigned]
        if parts:
            if paused:
                self._consumer.pause(parts)
            else:
                self._consumer.resume(parts)
        self._paused = paused
        self._update_partition_gauges()

    def _commit_kafka(self, offsets: list[TopicPartition]) -> None:
        """Mirror the committed positions into Kafka so standard lag tools see them."""
        assert self._consumer is not None
        try:
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            log.debug("kafka commit skipped: %s", exc)

    def _refresh_lag(self) -> None:
        assert self._consumer is not None
        for topic, partition in list(self._assigned):
            tp = TopicPartition(topic, partition)
            try:
                _low, high = self._consumer.get_watermark_offsets(tp, timeout=1.0, cached=False)
                position = self._consumer.position([tp])[0].offset
            except KafkaException:
                continue
            if position < 0:
                position = self._floor.get((topic, partition), -1)
            if position >= 0 and high >= 0:
                self.metrics.consumer_lag.labels(topic, str(partition)).set(max(0, high - position))

    def _consume(self, count: int, timeout_s: float) -> list[Message]:
        assert self._consumer is not None
        return list(self._consumer.consume(num_messages=count, timeout=timeout_s))

    # -- loop ------------------------------------------------------------------

    def _usable(self, messages: Sequence[Message]) -> list[Message]:
        """Drop errors, messages of partitions no longer ours, and offsets already applied."""
        out = []
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise KafkaException(err)
                log.warning("consumer error: %s", err)
                continue
            tp = (msg.topic() or "", msg.partition() or 0)
            if tp not in self._assigned:
                continue
            if (msg.offset() or 0) < self._floor.get(tp, -1):
                continue
            out.append(msg)
        return out

    def liveness(self) -> bool:
        limit_s = max(60.0, self.settings.max_poll_interval_ms / 1000)
        return time.monotonic() - self._heartbeat < limit_s

    def readiness(self) -> Readiness:
        reasons = []
        if self._consumer is None:
            reasons.append("consumer not started")
        elif not self._assigned:
            reasons.append("no partitions assigned")
        for dep, breaker in self.breakers.items():
            if breaker.state == "open":
                reasons.append(f"circuit {dep} open")
        return Readiness(ready=not reasons, reasons=tuple(reasons))

    def stop(self) -> None:
        self._stopping.set()

    async def _idle(self, seconds: float) -> None:
        """Keep polling (partitions paused) so the group keeps this member while we wait."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._stopping.is_set():
            stray = await self._k(
                self._consume, 100, min(0.2, max(0.01, deadline - time.monotonic()))
            )
            self._heartbeat = time.monotonic()
            if stray:
                log.debug(
                    "%d messages arrived while paused; they will be fetched again", len(stray)
                )
                await self._k(self._seek_back, self._usable(stray))

    def _seek_back(self, messages: list[Message]) -> None:
        assert self._consumer is not None
        first: dict[TP, int] = {}
        for msg in messages:
            tp = (msg.topic() or "", msg.partition() or 0)
            first[tp] = min(first.get(tp, msg.offset() or 0), msg.offset() or 0)
        for (topic, partition), offset in first.items():
            with contextlib.suppress(KafkaException):
                self._consumer.seek(TopicPartition(topic, partition, offset))

    async def _handle(self, pipeline: Pipeline, messages: list[Message]) -> None:
        """Process one batch, waiting out outages with partitions paused; gives up only on stop."""
        outage_started: float | None = None
        while messages:
            try:
                report = await pipeline.process(messages, dict(self._assigned))
            except FencedError as exc:
                self.stats.fenced_batches += 1
                self.metrics.fenced.inc()
                log.warning("batch fenced, dropping partitions we no longer own: %s", exc)
                await self._k(self._forget_fenced, exc)
                messages = self._usable(messages)
                continue
            except DependencyUnavailable as exc:
                if outage_started is None:
                    outage_started = time.monotonic()
                    self.stats.outage_waits += 1
                    log.warning("dependency unavailable, pausing partitions: %s", exc)
                    await self._k(self._set_paused, True)
                if self._stopping.is_set():
                    log.warning("stopping during an outage: the batch in hand is left uncommitted")
                    return
                await self._idle(self.settings.circuit_reset_timeout_s)
                messages = self._usable(messages)
                continue
            if outage_started is not None:
                log.info("dependency back after %.1fs, resuming", time.monotonic() - outage_started)
            self.stats.batches += 1
            self.stats.report.add(report)
            self._floor.update(report.next_offsets)
            await self._k(
                self._commit_kafka,
                [TopicPartition(t, p, o) for (t, p), o in report.next_offsets.items()],
            )
            break
        if self._paused:
            await self._k(self._set_paused, False)

    def _forget_fenced(self, exc: FencedError) -> None:
        """A fenced partition was taken over: treat it as revoked until the group says otherwise."""
        for tp in exc.partitions:
            self._assigned.pop(tp, None)
            self._floor.pop(tp, None)
        self._update_partition_gauges()

    async def run(self, stop: asyncio.Event | None = None) -> WorkerStats:
        """Consume until stopped; the batch in hand is finished and committed, the group left cleanly."""
        s = self.settings
        self._loop = asyncio.get_running_loop()
        if stop is not None:
            self._stopping = stop
        if self._install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._stopping.set)

        health: HealthServer | None = None
        if s.metrics_port:
            health = HealthServer(
                self.metrics.registry,
                host=s.metrics_host,
                port=s.metrics_port,
                liveness=self.liveness,
                readiness=self.readiness,
            )
            self.health_port = health.start()

        self._db = Database(
            s.database_dsn, pool_size=s.database_pool_size, timeout_s=s.database_timeout_s
        )
        etags = self._etags if self._etags is not None else make_etag_source(s, self.metrics)
        publisher = Publisher(s)
        codec = Codec.from_settings(s)
        try:
            await self._start_db()
            publisher.start()
            pipeline = Pipeline(
                s,
                db=self._db,
                etags=etags,
                publisher=publisher,
                codec=codec,
                metrics=self.metrics,
                breakers=self.breakers,
            )
            self._consumer = Consumer(self._consumer_config())
            await self._k(self._subscribe)
            last_lag = 0.0
            while not self._stopping.is_set():
                raw = await self._k(self._consume, s.batch_max_events, s.batch_max_wait_ms / 1000)
                self._heartbeat = time.monotonic()
                if self._unclaimed:
                    await self._claim_late()
                messages = self._usable(raw)
                if messages:
                    await self._handle(pipeline, messages)
                if time.monotonic() - last_lag >= s.lag_refresh_s:
                    last_lag = time.monotonic()
                    await self._k(self._refresh_lag)
        finally:
            await self._shutdown(publisher, etags, health)
        return self.stats

    async def _claim_late(self) -> None:
        """Claim partitions whose claim failed during the rebalance, then seek and resume them."""
        assert self._db is not None
        wanted = sorted(self._unclaimed)
        try:
            claims = await self._db.claim_partitions(self.settings.group_id, self.owner, wanted)
        except StreamerError as exc:
            log.debug("late claim still failing: %s", exc)
            return
        await self._k(self._position_claimed, claims)

    def _position_claimed(self, claims: list[OffsetClaim]) -> None:
        assert self._consumer is not None
        for claim in claims:
            tp = (claim.topic, claim.partition)
            if tp not in self._unclaimed:
                continue
            self._unclaimed.discard(tp)
            self._own(claim)
            part = TopicPartition(claim.topic, claim.partition)
            if claim.next_offset >= 0:
                try:
                    self._consumer.seek(
                        TopicPartition(claim.topic, claim.partition, claim.next_offset)
                    )
                except KafkaException as exc:
                    log.warning("seek %s[%d] failed: %s", claim.topic, claim.partition, exc)
            if not self._paused:
                self._consumer.resume([part])
        self._update_partition_gauges()

    def _subscribe(self) -> None:
        assert self._consumer is not None
        self._consumer.subscribe(
            [self.settings.product_topic, self.settings.media_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    async def _start_db(self) -> None:
        assert self._db is not None
        while True:
            try:
                await self._db.start()
                return
            except DependencyUnavailable as exc:
                if self._stopping.is_set():
                    raise
                log.warning("PostgreSQL not reachable yet, retrying: %s", exc)
                await asyncio.sleep(self.settings.circuit_reset_timeout_s)

    async def _shutdown(
        self, publisher: Publisher, etags: EtagSource, health: HealthServer | None
    ) -> None:
        if self._consumer is not None:
            with contextlib.suppress(KafkaException, RuntimeError):
                await asyncio.wait_for(
                    self._k(self._consumer.close), timeout=self.settings.shutdown_grace_s
                )
        with contextlib.suppress(StreamerError):
            publisher.close(timeout_s=5.0)
        etags.close()
        if self._db is not None:
            await self._db.stop()
        if health is not None:
            health.stop()
        self._kafka.shutdown(wait=False)
        r = self.stats.report
        log.info(
            "worker %s stopped: %d batches, %d messages, outcomes %s, dead letters %s, rebalances %d",
            self.owner,
            self.stats.batches,
            r.messages,
            dict(r.outcomes),
            dict(r.dead_letters),
            self.stats.rebalances,
        )
