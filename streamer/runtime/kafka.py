"""The Kafka side of a worker: the confluent-kafka consumer, on a thread of its own.

The consumer is not thread-safe, so every call to it runs on one dedicated thread;
the event loop owns everything else. Rebalance callbacks run on that thread inside
``consume()``. The thread is a daemon: a broker that hangs ``close()`` cannot hold
the process past its shutdown bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, Future
from typing import Any, Protocol, TypeVar

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from streamer.runtime.errors import BrokerAccessDenied

__all__ = ["ConsumerThread", "RebalanceListener"]

_DENIED = (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED)

log = logging.getLogger(__name__)

T = TypeVar("T")
TP = tuple[str, int]


class _DaemonThread(Executor):
    """A single daemon thread running submitted calls in order."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[
            tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None
        ]
        self._calls = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (item := self._calls.get()) is not None:
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting side
                future.set_exception(exc)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        self._calls.put((future, functools.partial(fn, *args, **kwargs), ()))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._calls.put(None)
        if wait:
            self._thread.join()


class RebalanceListener(Protocol):
    """Called on the Kafka thread during ``consume()``."""

    def on_assign(self, partitions: list[TP]) -> dict[TP, int] | None:
        """Claim the partitions; return where to start each (-1: the group's reset), or
        None to take them paused until a later claim succeeds."""
        ...

    def on_revoke(self, partitions: list[TP], kind: str) -> None: ...


class ConsumerThread:
    def __init__(self, config: dict[str, Any], listener: RebalanceListener) -> None:
        self._config = config
        self._listener = listener
        # An eager assignor (classic range) hands over the whole assignment at each
        # rebalance (``assign``); a cooperative one (cooperative-sticky, KIP-848) only what
        # changed (``incremental_assign``). librdkafka refuses the other call.
        classic = config.get("group.protocol", "classic") == "classic"
        strategy = str(config.get("partition.assignment.strategy", ""))
        self._eager = classic and "cooperative" not in strategy
        self._thread: _DaemonThread | None = None
        self._consumer: Consumer | None = None
        self.paused = False

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._thread is None:
            self._thread = _DaemonThread("kafka")
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    @property
    def started(self) -> bool:
        return self._consumer is not None

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            raise RuntimeError("ConsumerThread.start() was not called")
        return self._consumer

    async def start(self, topics: Sequence[str]) -> None:
        def subscribe() -> None:
            self._consumer = Consumer(self._config)
            self._consumer.subscribe(
                list(topics),
                on_assign=self._on_assign,
                on_revoke=lambda c, ps: self._listener.on_revoke(_tps(ps), "revoke"),
                on_lost=lambda c, ps: self._listener.on_revoke(_tps(ps), "lost"),
            )

        await self.call(subscribe)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assign = consumer.assign if self._eager else consumer.incremental_assign
        starts = self._listener.on_assign(_tps(partitions))
        if starts is None:
            # Take them, but paused: nothing is fetched until the database vouches for a position.
            assign(partitions)
            consumer.pause(partitions)
            return
        positioned = [
            TopicPartition(t, p, offset if offset >= 0 else OFFSET_INVALID)
            for (t, p), offset in starts.items()
        ]
        assign(positioned)
        # librdkafka keeps a partition's pause across a revoke: one paused during an
        # outage and assigned back later would never be fetched again. Say it each time.
        (consumer.pause if self.paused else consumer.resume)(positioned)
        log.info(
            "assigned %s", ", ".join(f"{t.topic}[{t.partition}]@{t.offset}" for t in positioned)
        )

    async def consume(self, count: int, timeout_s: float) -> list[Message]:
        """Messages of this poll; consumer errors are logged, fatal ones raised, and a
        refusal by Kafka's authorizer ends the worker with what to grant (retrying would
        only fail again, and nothing was consumed that could be lost)."""

        def poll() -> list[Message]:
            out = []
            for msg in self.consumer.consume(num_messages=count, timeout=timeout_s):
                err = msg.error()
                if err is None:
                    out.append(msg)
                elif err.code() in _DENIED:
                    raise BrokerAccessDenied(self._denied(err, msg))
                elif err.fatal():
                    raise KafkaException(err)
                elif err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", err)
            return out

        return await self.call(poll)

    def _denied(self, err: KafkaError, msg: Message) -> str:
        if err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
            resource = f"consumer group {self._config.get('group.id')!r}"
        else:
            resource = f"topic {msg.topic()!r}" if msg.topic() else "a subscribed topic"
        user = self._config.get("sasl.username")
        principal = f"User:{user}" if user else "this client's principal"
        return (
            f"Kafka denies {principal} the Read operation on {resource}: grant it an ACL "
            f"(kafka-acls --add --allow-principal {principal} --operation Read ...)"
        )

    async def set_paused(self, partitions: Iterable[TP], paused: bool) -> None:
        parts = [TopicPartition(t, p) for t, p in partitions]

        def apply() -> None:
            if parts:
                (self.consumer.pause if paused else self.consumer.resume)(parts)
            self.paused = paused

        await self.call(apply)

    async def resume_claimed(self, starts: dict[TP, int]) -> None:
        """Partitions taken paused on assignment, now claimed: seek to the stored offset."""

        def apply() -> None:
            for (topic, partition), offset in starts.items():
                if offset >= 0:
                    try:
                        self.consumer.seek(TopicPartition(topic, partition, offset))
                    except KafkaException as exc:
                        log.warning("seek %s[%d] failed: %s", topic, partition, exc)
                if not self.paused:
                    self.consumer.resume([TopicPartition(topic, partition)])

        await self.call(apply)

    async def seek_back(self, messages: Sequence[Message]) -> None:
        """Rewind to the first of these messages, so they are fetched again later."""
        first: dict[TP, int] = {}
        for msg in messages:
            tp = (msg.topic() or "", msg.partition() or 0)
            first[tp] = min(first.get(tp, msg.offset() or 0), msg.offset() or 0)

        def apply() -> None:
            for (topic, partition), offset in first.items():
                with contextlib.suppress(KafkaException):
                    self.consumer.seek(TopicPartition(topic, partition, offset))

        await self.call(apply)

    async def mirror_commit(self, offsets: dict[TP, int]) -> None:
        """Copy committed positions into Kafka so standard lag tools see them."""

        def apply() -> None:
            try:
                self.consumer.commit(
                    offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                    asynchronous=True,
                )
            except KafkaException as exc:
                log.debug("kafka commit skipped: %s", exc)

        await self.call(apply)

    async def lag(self, partitions: Iterable[TP], floors: dict[TP, int]) -> dict[TP, int]:
        """Messages behind the high-water mark per partition, from what the fetches already
        said: the high-water mark of the last fetch response (no request to the broker);
        only a partition not fetched yet is asked. Asking every time cost a broker round
        trip per partition on the consumer's thread, which on the dev broker grows with the
        partition's length: seconds of every refresh after half an hour of soak."""

        def measure() -> dict[TP, int]:
            out: dict[TP, int] = {}
            for topic, partition in partitions:
                tp = TopicPartition(topic, partition)
                try:
                    _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
                    if high < 0:
                        _low, high = self.consumer.get_watermark_offsets(
                            tp, timeout=1.0, cached=False
                        )
                    position = self.consumer.position([tp])[0].offset
                except KafkaException:
                    continue
                if position < 0:
                    position = floors.get((topic, partition), -1)
                if position >= 0 and high >= 0:
                    out[(topic, partition)] = max(0, high - position)
            return out

        return await self.call(measure)

    async def close(self, timeout_s: float) -> None:
        """Leave the group; gives up (the thread is a daemon) after ``timeout_s``."""
        if self._consumer is not None:
            try:
                await asyncio.wait_for(self.call(self._consumer.close), timeout=timeout_s)
            except TimeoutError:
                log.warning("leaving the group did not finish within %.1fs", timeout_s)
            except (KafkaException, RuntimeError) as exc:
                log.warning("closing the consumer failed: %s", exc)
        if self._thread is not None:
            self._thread.shutdown(wait=False)


def _tps(partitions: list[TopicPartition]) -> list[TP]:
    return [(tp.topic, tp.partition) for tp in partitions]
