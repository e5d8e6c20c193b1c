"""The batch loop: one member of a job's consumer group, around the job's handler.

Poll a batch (bounded by count and wait), keep what this worker owns, hand it to the
handler and the checkpoint, mirror the committed offsets to Kafka. While a dependency
is down the worker keeps the batch in hand, pauses every assigned partition and keeps
polling (so it stays in the group), then retries the same batch when the circuit
breaker lets a probe through or the error's retry-after has passed.

SIGTERM/SIGINT (or ``stop``) start a drain bounded by ``STREAMER_SHUTDOWN_GRACE_S``
from the moment of the signal: the batch in hand is finished and committed if it can
be within the bound, otherwise abandoned uncommitted (its messages are redelivered);
then the group is left, as far as the rest of the bound allows.

Overlap. While batch N is written and committed, the next batch N+1 is polled and
``prepare(N+1)`` runs (for the gallery: decode, state read, ETag look-up); ``plan(N+1)``
runs only after N committed and ``committed(N)`` was called. What keeps the order:

- Offsets and writes still commit one batch at a time, in poll order: N+1's commit
  starts after N's ended, so per-partition (and so per-key) order is unchanged.
- ``prepare`` writes nothing, so running it early changes no state. It may read what
  N has not committed yet; a handler whose plan depends on such reads corrects them in
  ``plan`` from what it kept in ``committed(N)`` (the gallery overlays N's final states
  and recorded outcomes; see ``GalleryHandler``).
- N+1's early preparation is used only if N committed at its first attempt and the
  partition ownership did not change meanwhile. If N's commit failed (an outage, a
  fence) or a rebalance happened, N+1 is filtered again to the partitions still owned
  and prepared afresh after N committed; an early preparation that failed is dropped
  the same way (its error, if retriable, comes back when N+1 is prepared again).
- On a stop, N+1 is dropped uncommitted (its messages are redelivered).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from confluent_kafka import Message
from prometheus_client import CollectorRegistry

from streamer.errors import (
    BrokerUnavailable,
    DependencyUnavailable,
    FencedError,
    StateChanged,
    StreamerError,
)
from streamer.runtime import tracing
from streamer.runtime.checkpoint import Checkpoint
from streamer.runtime.circuit import CircuitBreaker
from streamer.runtime.connection import check_broker
from streamer.runtime.database import Database
from streamer.runtime.handler import Batch, Handler, Output, start_handler
from streamer.runtime.health import HealthServer, Readiness
from streamer.runtime.kafka import ConsumerThread
from streamer.runtime.logs import set_process_fields
from streamer.runtime.metrics import RuntimeMetrics, new_registry
from streamer.runtime.ownership import OffsetStore, Owner
from streamer.runtime.publisher import Publisher
from streamer.runtime.retry import RetryPolicy, retry_async
from streamer.runtime.settings import DatabaseSettings, KafkaSettings, RuntimeSettings

__all__ = ["Runner", "RunnerStats"]

log = logging.getLogger(__name__)

P = TypeVar("P")
T = TypeVar("T")
TP = tuple[str, int]
# The runtime's own dependencies: offsets live in PostgreSQL, outputs go to Kafka.
RUNTIME_DEPENDENCIES = ("postgres", "kafka")


@dataclass
class _Ahead(Generic[T]):
    """The next batch: polled, and being prepared, while the current one commits."""

    polled: asyncio.Task[Batch]
    generation: int  # the ownership generation when the poll started
    prepared: asyncio.Task[T] | None = None
    usable: bool = True  # False once the current batch's commit failed

    async def drop(self) -> None:
        """Forget the early preparation (and its error, if it failed)."""
        if self.prepared is not None:
            self.prepared.cancel()
            await asyncio.gather(self.prepared, return_exceptions=True)
            self.prepared = None
        await asyncio.gather(self.polled, return_exceptions=True)


@dataclass
class RunnerStats:
    batches: int = 0
    messages: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)
    rebalances: int = 0
    fenced_batches: int = 0
    replanned_batches: int = 0
    outage_waits: int = 0
    abandoned_batches: int = 0


class Runner(Generic[P]):
    """``await run(stop)`` until ``stop`` is set or a signal arrives."""

    def __init__(
        self,
        handler: Handler[Any, P],
        *,
        kafka: KafkaSettings,
        database: DatabaseSettings,
        runtime: RuntimeSettings,
        registry: CollectorRegistry | None = None,
        install_signal_handlers: bool = True,
    ) -> None:
        self.handler = handler
        self.kafka_settings = kafka
        self.settings = runtime
        self.registry = registry if registry is not None else new_registry()
        dependencies = list(dict.fromkeys([*handler.dependencies, *RUNTIME_DEPENDENCIES]))
        self.metrics = RuntimeMetrics(self.registry, dependencies)
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stats = RunnerStats()
        self.health_port: int | None = None
        self.database = Database(database)
        self.offsets = OffsetStore(self.database, handler.group_id, self.owner)
        self.publisher = Publisher(kafka)
        self.ownership = Owner(
            self.offsets,
            claim_timeout_s=database.database_timeout_s * 2,
            claim_deadline_s=max(5.0, kafka.session_timeout_ms / 1000),
            on_change=self._partitions_changed,
        )
        self.partitions = self.ownership.partitions
        self._lag_series: set[TP] = set()
        self.policy = RetryPolicy.from_settings(runtime)
        self.breakers = {
            dep: CircuitBreaker(
                dep,
                failure_threshold=runtime.circuit_failure_threshold,
                reset_timeout_s=runtime.circuit_reset_timeout_s,
                metrics=self.metrics,
            )
            for dep in dependencies
        }
        self.checkpoint = Checkpoint(
            self.offsets,
            self.publisher,
            dlq_topic=runtime.dlq_topic,
            dlq_max_value_bytes=runtime.dlq_max_value_bytes,
            delivery_timeout_s=kafka.delivery_timeout_ms / 1000,
            call=self.call,
        )
        self.consumer = ConsumerThread(self._consumer_config(), self.ownership)
        self._install_signals = install_signal_handlers
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._heartbeat = time.monotonic()
        self._started = False
        self._tracing = False  # this runner set tracing up (and shuts it down)
        # Bumped on every assignment change: an early preparation older than it is redone.
        self._ownership_generation = 0

    # -- what handlers and the checkpoint call -----------------------------------------

    async def call(self, dependency: str, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn`` with retries, counted by the dependency's circuit breaker."""
        return await retry_async(
            fn,
            dependency=dependency,
            policy=self.policy,
            breaker=self.breakers.get(dependency),
            metrics=self.metrics,
        )

    # -- the Kafka side ------------------------------------------------------------------

    def _consumer_config(self) -> dict[str, Any]:
        k = self.kafka_settings
        return k.client_config(
            **k.group_config(self.handler.group_id),
            **{
                "client.id": self.owner,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": k.fetch_wait_max_ms,
                "max.poll.interval.ms": k.max_poll_interval_ms,
                "enable.partition.eof": False,
            },
        )

    def _partitions_changed(self, kind: str) -> None:
        self._ownership_generation += 1
        if kind != "fenced":
            self.metrics.rebalances.labels(kind).inc()
            self.stats.rebalances += 1
        if kind in ("revoke", "lost"):
            for topic, partition in self._lag_series - set(self.partitions.epochs):
                with contextlib.suppress(KeyError):
                    self.metrics.consumer_lag.remove(topic, str(partition))
            self._lag_series &= set(self.partitions.epochs)
        self._update_partition_gauges()

    def _update_partition_gauges(self) -> None:
        owned = len(self.partitions.epochs)
        self.metrics.assigned_partitions.set(owned)
        self.metrics.paused_partitions.set(owned if self.consumer.paused else 0)

    def _usable(self, message: Message) -> bool:
        """Ours to apply: of a partition we own, and not applied before."""
        tp = (message.topic() or "", message.partition() or 0)
        return self.partitions.owns(tp, message.offset() or 0)

    async def _set_paused(self, paused: bool) -> None:
        await self.consumer.set_paused(list(self.partitions.epochs), paused)
        self._update_partition_gauges()

    # -- health ------------------------------------------------------------------------

    def liveness(self) -> bool:
        limit_s = max(60.0, self.kafka_settings.max_poll_interval_ms / 1000)
        return time.monotonic() - self._heartbeat < limit_s

    def readiness(self) -> Readiness:
        reasons = []
        if not self.consumer.started:
            reasons.append("consumer not started")
        elif not self.partitions.epochs:
            reasons.append("no partitions assigned")
        for dep, breaker in self.breakers.items():
            if breaker.state == "open":
                detail = f": {breaker.last_error}" if breaker.last_error else ""
                reasons.append(f"circuit {dep} open{detail}")
        return Readiness(ready=not reasons, reasons=tuple(reasons))

    # -- the loop ------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def run(self, stop: asyncio.Event | None = None) -> RunnerStats:
        """Consume until stopped; see the module docstring for how the stop is bounded."""
        self._loop = asyncio.get_running_loop()
        self.ownership.loop = self._loop
        if stop is not None:
            self._stop = stop
        if self._install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._stop.set)
        set_process_fields(job=self.handler.name, group=self.handler.group_id)
        self._tracing = tracing.configure(f"streamer-{self.handler.name}")  # tracing
        health = self._start_health()
        stop_deadline: float | None = None
        try:
            if not await self._start():
                return self.stats
            # What start-up built (modules, clients, botocore's service models) lives as long
            # as the process: frozen, the collector's full passes walk only what batches
            # allocate. Without it they walked it all, a fifth of a no-op re-sync's CPU.
            gc.freeze()
            main = asyncio.create_task(self._consume_loop())
            stopping = asyncio.create_task(self._stop.wait())
            try:
                await asyncio.wait({main, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            if main.done():
                main.result()
            else:
                stop_deadline = time.monotonic() + self.settings.shutdown_grace_s
                await self._drain(main, stop_deadline)
        finally:
            await self._shutdown(stop_deadline, health)
        return self.stats

    def _start_health(self) -> HealthServer | None:
        s = self.settings
        if not s.metrics_port:
            return None
        health = HealthServer(
            self.registry,
            host=s.metrics_host,
            port=s.metrics_port,
            liveness=self.liveness,
            readiness=self.readiness,
        )
        self.health_port = health.start()
        return health

    async def _start(self) -> bool:
        """Kafka checked, database (waited for), publisher, handler, subscription; False if
        stopped meanwhile. Refused credentials or certificates end the start with
        ``BrokerAccessDenied``; a broker that does not answer yet is left to librdkafka."""
        try:
            await asyncio.get_running_loop().run_in_executor(
                None,
                lambda: check_broker(self.kafka_settings, topics=tuple(self.handler.topics)),
            )
        except BrokerUnavailable as exc:
            log.warning("%s; consuming starts when it answers", exc)
        while True:
            try:
                await self.database.start()
                break
            except DependencyUnavailable as exc:
                log.warning("PostgreSQL not reachable yet, retrying: %s", exc)
                try:
                    await asyncio.wait_for(
                        self._stop.wait(), timeout=self.settings.circuit_reset_timeout_s
                    )
                    return False
                except TimeoutError:
                    continue
        self.publisher.start()
        await start_handler(
            self.handler, registry=self.registry, database=self.database, call=self.call
        )
        self._started = True
        await self.consumer.start(self.handler.topics)
        return True

    async def _drain(self, main: asyncio.Task[None], deadline: float) -> None:
        """Let the batch in hand finish within the bound; abandon it uncommitted otherwise."""
        # Keep a fifth of the bound (at most 5 s) for leaving the group.
        reserve = min(5.0, self.settings.shutdown_grace_s / 5)
        done, _ = await asyncio.wait(
            {main}, timeout=max(0.0, deadline - reserve - time.monotonic())
        )
        if done:
            main.result()
            return
        self.stats.abandoned_batches += 1
        log.warning(
            "the batch in hand did not finish within the shutdown bound (%.0fs); "
            "it is left uncommitted and will be consumed again",
            self.settings.shutdown_grace_s,
        )
        main.cancel()
        await asyncio.gather(main, return_exceptions=True)

    async def _poll(self) -> Batch:
        """One poll, bounded by count and wait, kept to what this worker owns."""
        s = self.settings
        raw = await self.consumer.consume(s.batch_max_events, s.batch_max_wait_ms / 1000)
        self._heartbeat = time.monotonic()
        if self.partitions.unclaimed:
            starts = await self.ownership.claim_late()
            await self.consumer.resume_claimed(starts)
            self._update_partition_gauges()
        batch = Batch(raw).keep(self._usable)
        return tracing.begin_batch(batch, job=self.handler.name, group=self.handler.group_id)

    async def _consume_loop(self) -> None:
        s = self.settings
        last_lag = 0.0
        ahead: _Ahead[Any] | None = None
        try:
            while not self._stop.is_set():
                if ahead is None:
                    batch, early = await self._poll(), None
                else:
                    batch, early = await self._take(ahead)
                    ahead = None
                if batch.messages:
                    with tracing.batch_scope(batch):  # tracing
                        ahead = await self._handle(batch, early)
                if time.monotonic() - last_lag >= s.lag_refresh_s:
                    last_lag = time.monotonic()
                    await self._refresh_lag()
        finally:
            if ahead is not None:
                await ahead.drop()

    async def _take(self, ahead: _Ahead[Any]) -> tuple[Batch, asyncio.Task[Any] | None]:
        """The batch polled during the previous commit, with its early preparation if that
        still holds (see the module docstring); otherwise filtered again, to prepare anew."""
        batch = await ahead.polled
        kept = batch.keep(self._usable)
        if (
            ahead.usable
            and ahead.prepared is not None
            and ahead.generation == self._ownership_generation
            and len(kept) == len(batch)
        ):
            return batch, ahead.prepared
        await ahead.drop()
        return kept, None

    async def _look_ahead(self) -> _Ahead[Any]:
        """Poll the next batch and start preparing it, while the current one commits."""
        generation = self._ownership_generation
        polled = asyncio.ensure_future(self._poll())
        ahead: _Ahead[Any] = _Ahead(polled, generation)

        async def prepare_when_polled() -> Any:
            batch = await polled
            if not batch.messages:
                return None
            with tracing.activate(batch):  # tracing
                return await self.handler.prepare(batch)

        ahead.prepared = asyncio.ensure_future(prepare_when_polled())
        return ahead

    async def _handle(
        self, batch: Batch, early: asyncio.Task[Any] | None = None
    ) -> _Ahead[Any] | None:
        """Process one batch, waiting out outages with partitions paused; gives up only on stop.

        ``early``: this batch's preparation, started while the previous batch committed.
        Returns the next batch, polled (and being prepared) while this one committed.
        """
        started = time.perf_counter()
        outage_started: float | None = None
        consumed = Counter(m.topic() or "" for m in batch.messages)
        for topic, n in consumed.items():
            self.metrics.messages_consumed.labels(topic).inc(n)
        ahead: _Ahead[Any] | None = None
        try:
            while batch.messages:
                try:
                    if early is not None:
                        task, early = early, None
                        prepared = await task
                    else:
                        prepared = await self.handler.prepare(batch)
                    plan = await self.handler.plan(prepared)
                    epochs = dict(self.partitions.epochs)
                    commit = functools.partial(
                        self.checkpoint.commit, batch, epochs, self.handler, plan
                    )
                    committing = asyncio.ensure_future(self.call("postgres", commit))
                    if ahead is None and not self._stop.is_set() and not self.consumer.paused:
                        ahead = await self._look_ahead()
                    output: Output = await committing
                except StateChanged as exc:
                    # Another writer committed to keys this batch read: read them again.
                    self.stats.replanned_batches += 1
                    self.metrics.replanned.inc()
                    log.info("batch planned on stale state, planning it again: %s", exc)
                    if ahead is not None:
                        ahead.usable = False
                    batch = batch.keep(self._usable)
                    continue
                except FencedError as exc:
                    self.stats.fenced_batches += 1
                    self.metrics.fenced.inc()
                    log.warning("batch fenced, dropping partitions we no longer own: %s", exc)
                    self.ownership.fenced(exc.partitions)
                    batch = batch.keep(self._usable)
                    if ahead is not None:
                        ahead.usable = False
                    continue
                except DependencyUnavailable as exc:
                    if ahead is not None:
                        ahead.usable = False
                    if outage_started is None:
                        outage_started = time.monotonic()
                        self.stats.outage_waits += 1
                        log.warning("dependency unavailable, pausing partitions: %s", exc)
                        await self._set_paused(True)
                    if self._stop.is_set():
                        log.warning(
                            "stopping during an outage: the batch in hand is left uncommitted"
                        )
                        return ahead
                    await self._idle(exc.retry_after_s or self.settings.circuit_reset_timeout_s)
                    batch = batch.keep(self._usable)
                    continue
                if outage_started is not None:
                    log.info(
                        "dependency back after %.1fs, resuming", time.monotonic() - outage_started
                    )
                self._committed(batch, plan, output, started)
                await self.consumer.mirror_commit(batch.next_offsets)
                break
        except BaseException:
            if ahead is not None:
                await ahead.drop()
            raise
        finally:
            if early is not None:
                early.cancel()
                await asyncio.gather(early, return_exceptions=True)
        if self.consumer.paused:
            await self._set_paused(False)
        return ahead

    def _committed(self, batch: Batch, plan: P, output: Output, started: float) -> None:
        self.partitions.passed(batch.next_offsets)
        self.handler.committed(plan, output)
        tracing.batch_committed(batch, output)  # tracing
        self.stats.batches += 1
        self.stats.messages += len(batch)
        self.stats.counts.update(output.counts)
        for letter in output.letters:
            self.stats.dead_letters[letter.reason] += 1
            self.metrics.dead_letters.labels(letter.reason).inc()
            log.info(
                "dead-lettered: %s",
                letter.message,
                extra={
                    "topic": letter.topic,
                    "partition": letter.partition,
                    "offset": letter.offset,
                    "sku": letter.sku,
                    "reason": letter.reason,
                },
            )
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batch_duration.observe(time.perf_counter() - started)
        self.metrics.last_commit.set(time.time())

    async def _idle(self, seconds: float) -> None:
        """Keep polling (partitions paused) so the group keeps this member while we wait."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._stop.is_set():
            stray = await self.consumer.consume(
                100, min(0.2, max(0.01, deadline - time.monotonic()))
            )
            self._heartbeat = time.monotonic()
            if stray:
                log.debug(
                    "%d messages arrived while paused; they will be fetched again", len(stray)
                )
                await self.consumer.seek_back(Batch(stray).keep(self._usable).messages)

    async def _refresh_lag(self) -> None:
        lags = await self.consumer.lag(list(self.partitions.epochs), dict(self.partitions.floors))
        for (topic, partition), lag in lags.items():
            self.metrics.consumer_lag.labels(topic, str(partition)).set(lag)
            self._lag_series.add((topic, partition))

    async def _shutdown(self, deadline: float | None, health: HealthServer | None) -> None:
        remaining = (
            self.settings.shutdown_grace_s if deadline is None else deadline - time.monotonic()
        )
        await self.consumer.close(timeout_s=max(1.0, remaining))
        try:
            self.publisher.close(timeout_s=min(5.0, max(1.0, remaining)))
        except StreamerError as exc:
            log.warning("closing the publisher: %s", exc)
        if self._started:
            await self.handler.stop()
        await self.database.stop()
        if health is not None:
            health.stop()
        if self._tracing:  # tracing
            tracing.shutdown(timeout_s=min(5.0, max(1.0, remaining)))
        s = self.stats
        log.info(
            "worker %s stopped: %d batches, %d messages, %s, dead letters %s, rebalances %d",
            self.owner,
            s.batches,
            s.messages,
            dict(s.counts),
            dict(s.dead_letters),
            s.rebalances,
        )
