"""A worker: one job's handler on one source, from start-up to a bounded stop.

The runner owns the lifecycle and delegates the rest: the source brings batches
(``source.py``: a Kafka group member or an SQS queue), the pipeline takes each through
the handler's steps and the checkpoint (``pipeline.py``), and background tasks (the
retention pruner, a job's own) run supervised beside them.

Start-up, in order: the broker is checked with the credentials the worker will use
(refused ones end the start; a broker that does not answer yet is waited for by the
client), PostgreSQL is waited for, the publisher and the handler start (the handler
checks its own dependencies), background tasks start, then the source.

The loop polls a batch, bounded by count and wait, and hands it to the pipeline; the
consumer lag gauge is refreshed every ``STREAMER_LAG_REFRESH_S``.

SIGTERM/SIGINT (or ``stop``) start a drain bounded by ``STREAMER_SHUTDOWN_GRACE_S``
from the moment of the signal: the batch in hand is finished and committed if it can
be within the bound, otherwise abandoned uncommitted (its messages are redelivered);
then the source is closed (the group left), as far as the rest of the bound allows. A
background task that dies of an error stops the worker with that error.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry

from streamer.errors import DependencyUnavailable, StreamerError
from streamer.runtime import faults, tracing
from streamer.runtime.checkpoint import Checkpoint
from streamer.runtime.circuit import CircuitBreaker
from streamer.runtime.connection import check_broker_async
from streamer.runtime.database import Database
from streamer.runtime.errors import BrokerUnavailable
from streamer.runtime.handler import Batch, Handler, HandlerContext, TopicPartition
from streamer.runtime.health import HealthServer, Readiness
from streamer.runtime.job import Sections
from streamer.runtime.kafka_source import KafkaSource
from streamer.runtime.logs import set_process_fields
from streamer.runtime.lookahead import Ahead, Decoding
from streamer.runtime.metrics import RuntimeMetrics, new_registry
from streamer.runtime.pipeline import Pipeline, RunnerStats
from streamer.runtime.publisher import Publisher
from streamer.runtime.retention import Pruning, pruner_for
from streamer.runtime.retry import RetryPolicy, retry_async
from streamer.runtime.settings import DatabaseSettings, KafkaSettings, RuntimeSettings
from streamer.runtime.source import Source, SourceContext
from streamer.runtime.sqs_source import SqsSource

__all__ = ["Runner", "RunnerStats"]

log = logging.getLogger(__name__)

D = TypeVar("D")
P = TypeVar("P")
E = TypeVar("E")
T = TypeVar("T")
# The runtime's own dependencies: offsets live in PostgreSQL, outputs go to Kafka.
RUNTIME_DEPENDENCIES = ("postgres", "kafka")


class Runner(Generic[D, P, E]):
    """``await run(stop)`` until ``stop`` is set or a signal arrives."""

    def __init__(
        self,
        handler: Handler[D, P, E],
        *,
        group_id: str,
        kafka: KafkaSettings,
        database: DatabaseSettings,
        runtime: RuntimeSettings,
        source: Source | None = None,
        registry: CollectorRegistry | None = None,
        install_signal_handlers: bool = True,
        pruning: Pruning | None = None,
    ) -> None:
        self.handler = handler
        self.group_id = group_id
        self.kafka_settings = kafka
        self.settings = runtime
        self.registry = registry if registry is not None else new_registry()
        self.source: Source = source or KafkaSource(
            kafka, group_id, claim_timeout_s=database.database_timeout_s * 2
        )
        own = ("sqs",) if isinstance(self.source, SqsSource) else ()
        dependencies = list(dict.fromkeys([*handler.dependencies, *RUNTIME_DEPENDENCIES, *own]))
        self.metrics = RuntimeMetrics(self.registry, dependencies)
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stats = RunnerStats()
        self.health_port: int | None = None
        self.database = Database(database)
        self.publisher = Publisher(kafka)
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
        self._stop = asyncio.Event()
        self.source.attach(
            SourceContext(
                database=self.database,
                metrics=self.metrics,
                owner=self.owner,
                changed=self._changed,
            )
        )
        self.checkpoint = Checkpoint(
            self.source.store,
            self.publisher,
            dlq_topic=runtime.dlq_topic,
            dlq_max_value_bytes=runtime.dlq_max_value_bytes,
            delivery_timeout_s=kafka.delivery_timeout_ms / 1000,
        )
        self.pipeline: Pipeline[D, P, E] = Pipeline(
            handler,
            self.source,
            self.checkpoint,
            call=self.call,
            metrics=self.metrics,
            stats=self.stats,
            stopping=self._stop,
            outage_wait_s=runtime.circuit_reset_timeout_s,
            poll=self._poll,
            group_id=group_id,
            messaging_system="aws_sqs" if own else "kafka",
        )
        self.pruning = pruning
        self._install_signals = install_signal_handlers
        self._heartbeat = time.monotonic()
        self._started = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._tracing = False  # this runner set tracing up (and shuts it down)

    @classmethod
    def of(
        cls, handler: Handler[D, P, E], sections: Sections, *, group_id: str, **kw: Any
    ) -> Runner[D, P, E]:
        """A runner for ``handler`` with the runtime's sections of ``sections``."""
        return cls(
            handler,
            group_id=group_id,
            kafka=sections.section(KafkaSettings),
            database=sections.section(DatabaseSettings),
            runtime=kw.pop("runtime", None) or sections.section(RuntimeSettings),
            **kw,
        )

    # -- what handlers and the pipeline call -------------------------------------------------

    async def call(self, dependency: str, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn`` with retries, refused at once while ``dependency``'s circuit is open; each
        failure counts against the breaker of the dependency it names."""
        return await retry_async(
            fn,
            dependency=dependency,
            policy=self.policy,
            breaker=self.breakers.get(dependency),
            breakers=self.breakers,
            metrics=self.metrics,
        )

    def spawn(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        """A background task, cancelled when the worker stops; dying of an error stops it."""

        async def supervised() -> None:
            await work()

        self._tasks[name] = asyncio.create_task(supervised(), name=name)

    # -- health --------------------------------------------------------------------------

    def liveness(self) -> bool:
        limit_s = max(60.0, self.kafka_settings.max_poll_interval_ms / 1000)
        return time.monotonic() - self._heartbeat < limit_s

    def readiness(self) -> Readiness:
        reasons = [*self.source.not_ready(), *self.handler.not_ready()]
        for dep, breaker in self.breakers.items():
            if breaker.state == "open":
                detail = f": {breaker.last_error}" if breaker.last_error else ""
                reasons.append(f"circuit {dep} open{detail}")
        return Readiness(ready=not reasons, reasons=tuple(reasons))

    # -- the lifecycle ---------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def run(self, stop: asyncio.Event | None = None) -> RunnerStats:
        """Consume until stopped; see the module docstring for how the stop is bounded."""
        loop = asyncio.get_running_loop()
        if stop is not None:
            self._stop = stop
            self.pipeline.stopping = stop
        if self._install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
        set_process_fields(job=self.handler.name, group=self.group_id)
        faults.announce()
        self._tracing = tracing.configure(f"streamer-{self.handler.name}")
        health = self._start_health()
        stop_deadline: float | None = None
        try:
            if not await self._start():
                return self.stats
            # What start-up built (modules, clients, botocore's service models) lives as long
            # as the process: frozen, the collector's full passes walk only what batches
            # allocate. Without it they walked it all, a fifth of a no-op re-sync's CPU.
            gc.freeze()
            main = asyncio.create_task(self._loop())
            stopping = asyncio.create_task(self._stop.wait())
            try:
                await asyncio.wait(
                    {main, stopping, *self._tasks.values()}, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                stopping.cancel()
            self._surface_task_failure(main)
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
        """Broker checked, database (waited for), publisher, handler, background tasks,
        source; False if stopped meanwhile. Refused credentials or certificates end the
        start with ``BrokerAccessDenied``; a broker that does not answer yet is waited for."""
        try:
            await check_broker_async(self.kafka_settings, topics=tuple(self.handler.topics))
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
        await self.handler.start(
            HandlerContext(
                job=self.handler.name,
                group_id=self.group_id,
                registry=self.registry,
                database=self.database,
                call=self.call,
                spawn=self.spawn,
            )
        )
        self._started = True
        pruner = pruner_for(self.pruning, self.database, self.registry)
        if pruner is not None:
            self.spawn("retention", pruner.run)
        await self.source.start(self.handler.topics)
        return True

    def _changed(self, kind: str, partitions: Sequence[TopicPartition]) -> None:
        if kind == "assign":
            self.stats.rebalances += 1
            self.handler.assigned(partitions)
        elif kind in ("revoke", "lost", "fenced"):
            self.stats.rebalances += kind != "fenced"
            self.handler.revoked(partitions)

    def _surface_task_failure(self, main: asyncio.Task[None]) -> None:
        """A background task that ended on its own ends the worker with its error."""
        for name, task in self._tasks.items():
            if task.done() and not task.cancelled():
                error = task.exception()
                if error is not None:
                    main.cancel()
                    log.error("background task %s failed: %r; stopping", name, error)
                    raise error

    async def _poll(self) -> Batch:
        """One poll, bounded by count and wait, kept to what this worker owns; an outage of
        the source itself (a queue that does not answer) is waited out like any other."""
        s = self.settings
        while True:
            try:
                batch = await self.source.poll(s.batch_max_events, s.batch_max_wait_ms / 1000)
                break
            except DependencyUnavailable as exc:
                breaker = self.breakers.get(exc.dependency)
                if breaker is not None:
                    breaker.record_failure(exc.message)
                log.warning("the source is unavailable, waiting: %s", exc)
                if self._stop.is_set():
                    return Batch(())
                await asyncio.sleep(exc.retry_after_s or self.settings.circuit_reset_timeout_s)
        self._heartbeat = time.monotonic()
        return batch

    async def _loop(self) -> None:
        last_lag = 0.0
        ahead: Ahead | None = None
        try:
            while not self._stop.is_set():
                waited = time.perf_counter()
                early: Decoding | None = None
                if ahead is None:
                    batch = await self._poll()
                else:
                    batch, early = await ahead.take(self.source.owns, self.source.generation)
                    ahead = None
                if batch.messages:
                    ahead = await self.pipeline.run(batch, early, time.perf_counter() - waited)
                if time.monotonic() - last_lag >= self.settings.lag_refresh_s:
                    last_lag = time.monotonic()
                    await self._refresh_lag()
        finally:
            if ahead is not None:
                await ahead.drop()

    async def _refresh_lag(self) -> None:
        started = time.perf_counter()
        lags = await self.source.lag()
        log.debug(
            "lag of %d partitions refreshed in %.1f ms: %s",
            len(lags),
            1000 * (time.perf_counter() - started),
            sum(lags.values()),
        )

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
        log.warning(
            "the batch in hand did not finish within the shutdown bound (%.0fs); "
            "it is left uncommitted and will be consumed again",
            self.settings.shutdown_grace_s,
        )
        main.cancel()
        await asyncio.gather(main, return_exceptions=True)

    async def _shutdown(self, deadline: float | None, health: HealthServer | None) -> None:
        remaining = (
            self.settings.shutdown_grace_s if deadline is None else deadline - time.monotonic()
        )
        await self.source.close(timeout_s=max(1.0, remaining))
        try:
            self.publisher.close(timeout_s=min(5.0, max(1.0, remaining)))
        except StreamerError as exc:
            log.warning("closing the publisher: %s", exc)
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if self._started:
            await self.handler.stop()
        await self.database.stop()
        if health is not None:
            health.stop()
        if self._tracing:
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
