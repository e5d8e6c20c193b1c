"""The producing side: delivery-checked Kafka producing for the runtime, the CLI and the API.

Keyed by SKU with the ``murmur2_random`` partitioner (Java-compatible placement),
idempotent (``enable.idempotence``, ``acks=all``). Delivery reports are collected
and ``flush`` raises a ``DeliveryError`` for any message the broker did not
acknowledge: a failed delivery is an error the caller sees, never a log line.
A full local queue is back-pressure (poll and retry), never a drop. A caller that
must know the fate of each message (the intake API, answering for every item of a
request while other requests share the producer) passes ``on_delivery``: that
message's report then goes to the caller instead of ``flush``'s account.

An idempotent producer can hit a fatal error (the broker lost track of its sequence
numbers, for one): librdkafka then refuses every later message of that instance, and
confluent-kafka raises the error from the ``poll`` or ``flush`` that served it, not to
an error callback. The publisher replaces the producer, and every message not yet
acknowledged counts as failed, retriably, so its caller sends it again (at least once,
as after a crash).

The delivery callbacks take no lock. confluent-kafka may run a delivery callback while
the fatal error's exception is still set on the thread: the first call inside the
callback then raises, after it has done its work. A lock acquired by that call is never
released (found by the chaos campaign: every later delivery report, on every thread,
waited for it forever). The callbacks only append to a deque; ``flush`` adds the
reports up, under the lock, on its own thread.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from streamer.runtime.connection import check_broker, denied
from streamer.runtime.errors import (
    BrokerUnavailable,
    DeliveryRefused,
    DeliveryUnavailable,
    TopicMissing,
)
from streamer.runtime.settings import KafkaSettings

__all__ = ["DeliveryFailure", "DeliveryReport", "Publisher", "fatal_error_of"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryFailure:
    topic: str
    key: bytes | None
    error: str
    retriable: bool


DeliveryReport = Callable[[KafkaError | None, Any], None]
# How long a topic missing from the metadata is looked for again before it is "missing".
_METADATA_SETTLE_S = 3.0
# Not sent because the producer was replaced: safe to send again.
_RESENDABLE = {KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT, KafkaError._FATAL}


@dataclass(frozen=True, slots=True)
class _Report:
    """One delivery report, as the callback saw it; ``own``: the caller had its own callback
    (it counts for the end offsets only)."""

    error: KafkaError | None
    topic: str
    partition: int
    offset: int | None
    key: bytes | None
    own: bool = False


def fatal_error_of(raised: object) -> str | None:
    """The text of a fatal client error that ``raised`` is, carries or was raised over, if
    any: confluent-kafka raises it as the ``KafkaError`` itself (no exception class), in a
    ``KafkaException`` from ``produce``; a callback that ran with it still set raises a
    ``SystemError`` over it."""
    seen: object = raised
    for _ in range(3):
        if seen is None:
            return None
        args = getattr(seen, "args", ())
        error = args[0] if isinstance(seen, KafkaException) and args else seen
        if isinstance(error, KafkaError) and error.fatal():
            return str(error.str())
        seen = getattr(seen, "__cause__", None) or getattr(seen, "__context__", None)
    return None


class Publisher:
    def __init__(
        self, settings: KafkaSettings, *, producer_config: dict[str, Any] | None = None
    ) -> None:
        self.settings = settings
        self._extra = producer_config or {}
        self._producer: Producer | None = None
        self._lock = threading.Lock()  # never taken inside a delivery callback (module doc)
        self._reports: deque[_Report] = deque()
        self._failures: list[DeliveryFailure] = []
        self._acked = 0
        self._pending = 0
        self._fatal: str | None = None  # a replaced producer's error, for the next flush
        self.renewals = 0  # producers replaced after a fatal error
        # Highest acknowledged offset + 1 per partition: exact, unlike some brokers' watermarks.
        self.end_offsets: dict[tuple[str, int], int] = {}

    def config(self) -> dict[str, Any]:
        s = self.settings
        return s.client_config(
            **{
                "enable.idempotence": True,
                "acks": "all",
                "partitioner": "murmur2_random",
                "linger.ms": 5,
                "compression.type": "lz4",
                "delivery.timeout.ms": s.delivery_timeout_ms,
                "message.timeout.ms": s.delivery_timeout_ms,
                **self._extra,
            }
        )

    def _renew(self, fatal: str) -> None:
        """A new producer in place of one that hit a fatal error. Every message not yet
        acknowledged fails at the next ``flush``, retriably."""
        self.renewals += 1
        old, self._producer = self._producer, Producer(self.config())
        log.warning("the Kafka producer hit a fatal error, a new one takes over: %s", fatal)
        with self._lock:
            self._fatal = fatal
        if old is not None:
            try:
                old.purge()
                old.flush(0)
            except:  # noqa: E722 - the old producer may raise its fatal error again, as a KafkaError
                log.debug("the replaced producer raised while purged: %s", sys.exc_info()[1])

    def start(self) -> None:
        if self._producer is None:
            self._producer = Producer(self.config())

    def __enter__(self) -> Publisher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            raise RuntimeError("Publisher.start() was not called")
        return self._producer

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        self._reports.append(_Report(err, msg.topic(), msg.partition(), msg.offset(), msg.key()))

    def _on_own_delivery(self, report: DeliveryReport, err: KafkaError | None, msg: Any) -> None:
        self._reports.append(
            _Report(err, msg.topic(), msg.partition(), msg.offset(), msg.key(), own=True)
        )
        report(err, msg)

    def _tally(self) -> None:
        """The reports the callbacks left, added up (under the lock, outside any callback)."""
        with self._lock:
            while self._reports:
                r = self._reports.popleft()
                if not r.own:
                    self._pending -= 1
                if r.error is None:
                    # A broker may acknowledge without an offset (seen from Tansu just after
                    # a restart): the message is delivered, only its position is unknown.
                    if r.offset is not None and r.offset >= 0:
                        tp = (r.topic, r.partition)
                        self.end_offsets[tp] = max(self.end_offsets.get(tp, 0), r.offset + 1)
                    if not r.own:
                        self._acked += 1
                elif not r.own:
                    err = r.error
                    text = err.str()
                    if err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                        text = denied(self.settings, "Write", f"topic {r.topic!r}")
                    self._failures.append(
                        DeliveryFailure(
                            r.topic,
                            r.key,
                            text,
                            bool(err.retriable() or err.fatal() or err.code() in _RESENDABLE),
                        )
                    )

    def _serve(self, call: Callable[[], int]) -> int:
        """``poll`` or ``flush`` of the producer; a fatal error it raises replaces the
        producer (0 returned: what was pending is counted as failed by ``flush``)."""
        try:
            return call()
        except:  # noqa: E722 - a fatal error comes as a KafkaError, which no exception class matches
            fatal = fatal_error_of(sys.exc_info()[1])
            if fatal is None:
                raise
            self._renew(fatal)
            return 0

    def produce(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp_ms: int | None = None,
        on_delivery: DeliveryReport | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {
            "on_delivery": self._on_delivery
            if on_delivery is None
            else functools.partial(self._on_own_delivery, on_delivery)
        }
        if headers:
            kwargs["headers"] = headers
        if timestamp_ms:
            kwargs["timestamp"] = timestamp_ms
        self._tally()
        renewed = False
        while True:
            try:
                self.producer.produce(topic, value, key, **kwargs)
                break
            except BufferError:
                self._serve(lambda: self.producer.poll(0.1))  # the local queue is full
            except KafkaException as exc:
                fatal = fatal_error_of(exc)
                if fatal is not None and not renewed:
                    self._renew(fatal)  # a new producer takes this message
                    renewed = True
                    continue
                raise DeliveryRefused(f"cannot produce to {topic}: {exc}") from exc
        with self._lock:
            self._pending += 1
        self._serve(lambda: self.producer.poll(0))

    def poll(self, timeout_s: float = 0.0) -> None:
        """Serve delivery reports (those of callers with their own callback, for one)."""
        self._serve(lambda: self.producer.poll(timeout_s))
        self._tally()

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for every delivery report; return the acks since the last flush or raise."""
        remaining = self._serve(lambda: self.producer.flush(timeout_s))
        self._tally()
        with self._lock:
            failures, self._failures = self._failures, []
            acked, self._acked = self._acked, 0
            pending = self._pending
            fatal, self._fatal = self._fatal, None
            if fatal is not None:
                # The replaced producer's messages will not all report: none is trusted.
                remaining, self._pending = max(remaining, pending, 1), 0
        if failures or remaining:
            detail = "; ".join(f"{f.topic}: {f.error}" for f in failures[:5])
            if remaining:
                detail = f"{remaining} message(s) not delivered within {timeout_s:.0f}s" + (
                    f"; {detail}" if detail else ""
                )
            text = (
                f"{len(failures) + remaining} message(s) not acknowledged by the broker: {detail}"
            )
            if fatal is not None:
                text += f" (the producer hit a fatal error and was replaced: {fatal})"
            if fatal is not None or all(f.retriable for f in failures):
                raise DeliveryUnavailable(text)
            raise DeliveryRefused(text)
        if pending:
            log.debug("%d deliveries still pending after flush", pending)
        return acked

    def check_topics(self, topics: Iterable[str], timeout_s: float = 5.0) -> None:
        """Fail fast, with a message a person can act on, before anything is produced.

        A topic missing from the brokers' metadata is looked for again for a moment: a broker
        can lag its controller by a few hundred milliseconds, so a topic created just before
        (``streamer topics create`` then ``publish``) may not be listed yet."""
        started = time.monotonic()
        topics = tuple(topics)
        check_broker(self.settings, timeout_s=timeout_s, topics=topics)
        settle = started + min(timeout_s, _METADATA_SETTLE_S)
        while True:
            try:
                metadata = self.producer.list_topics(timeout=timeout_s)
            except KafkaException as exc:
                raise BrokerUnavailable(
                    f"cannot reach Kafka at {self.settings.kafka_bootstrap} within "
                    f"{timeout_s:.0f}s: {exc}"
                ) from exc
            missing = [
                t
                for t in topics
                if (meta := metadata.topics.get(t)) is None or meta.error is not None
            ]
            if not missing:
                break
            if time.monotonic() >= settle:
                raise TopicMissing(
                    f"topic {missing[0]!r} does not exist on {self.settings.kafka_bootstrap}; "
                    "create it with `streamer topics create`"
                )
            time.sleep(0.2)
        log.debug("topics checked in %.3fs", time.monotonic() - started)

    def close(self, timeout_s: float = 30.0) -> None:
        if self._producer is None:
            return
        try:
            self.flush(timeout_s)
        finally:
            self._producer = None
