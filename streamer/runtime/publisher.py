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
numbers, for one): librdkafka then refuses every later message of that instance. The
publisher replaces it with a new producer, and the messages the old one did not
deliver fail as retriable, so their caller sends them again (at least once, as after a
crash). Without that a worker kept its transaction open, retrying on a dead producer.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from streamer.errors import BrokerUnavailable, DeliveryRefused, DeliveryUnavailable, TopicMissing
from streamer.runtime.connection import check_broker
from streamer.runtime.settings import KafkaSettings

__all__ = ["DeliveryFailure", "DeliveryReport", "Publisher"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryFailure:
    topic: str
    key: bytes | None
    error: str
    retriable: bool


DeliveryReport = Callable[[KafkaError | None, Any], None]
# Not sent because the producer was replaced: safe to send again.
_RESENDABLE = {KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT, KafkaError._FATAL}


class Publisher:
    def __init__(
        self, settings: KafkaSettings, *, producer_config: dict[str, Any] | None = None
    ) -> None:
        self.settings = settings
        self._extra = producer_config or {}
        self._producer: Producer | None = None
        self._lock = threading.Lock()
        self._failures: list[DeliveryFailure] = []
        self._acked = 0
        self._pending = 0
        self._fatal: str | None = None  # a fatal error of the current producer, not yet acted on
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
                "error_cb": functools.partial(self._on_error, self.renewals),
                **self._extra,
            }
        )

    def _on_error(self, generation: int, err: KafkaError) -> None:
        """Client-level errors: logged by librdkafka already; a fatal one marks the producer
        for replacement (served from ``poll`` and ``flush``, on the caller's thread), unless
        it is the report of a producer already replaced."""
        if err.fatal() and generation == self.renewals:
            with self._lock:
                self._fatal = err.str()

    def _renew_if_fatal(self) -> str | None:
        """A new producer in place of one that hit a fatal error; returns that error."""
        with self._lock:
            fatal, self._fatal = self._fatal, None
        if fatal is None or self._producer is None:
            return None
        self.renewals += 1
        old, self._producer = self._producer, Producer(self.config())
        log.warning("the Kafka producer hit a fatal error, a new one takes over: %s", fatal)
        # Its undelivered messages fail now (their reports count as retriable failures).
        with contextlib.suppress(KafkaException, RuntimeError):
            old.purge()
            old.flush(0)
        with self._lock:
            self._pending = 0
        return fatal

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
        with self._lock:
            self._pending -= 1
            if err is None:
                self._acked += 1
                # A broker may acknowledge without an offset (seen from Tansu just after a
                # restart): the message is delivered, only its position is unknown.
                offset = msg.offset()
                if offset is not None and offset >= 0:
                    tp = (msg.topic(), msg.partition())
                    self.end_offsets[tp] = max(self.end_offsets.get(tp, 0), offset + 1)
                return
            self._failures.append(
                DeliveryFailure(
                    msg.topic(),
                    msg.key(),
                    err.str(),
                    bool(err.retriable() or err.fatal() or err.code() in _RESENDABLE),
                )
            )

    def _on_own_delivery(self, report: DeliveryReport, err: KafkaError | None, msg: Any) -> None:
        with self._lock:
            self._pending -= 1
            if err is None:
                tp = (msg.topic(), msg.partition())
                self.end_offsets[tp] = max(self.end_offsets.get(tp, 0), msg.offset() + 1)
        report(err, msg)

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
        self._renew_if_fatal()
        while True:
            try:
                self.producer.produce(topic, value, key, **kwargs)
                break
            except BufferError:
                self.producer.poll(0.1)  # the local queue is full: wait for deliveries
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError) and error.fatal():
                    with self._lock:
                        self._fatal = self._fatal or error.str()
                    if self._renew_if_fatal() is not None:
                        continue
                raise DeliveryRefused(f"cannot produce to {topic}: {exc}") from exc
        with self._lock:
            self._pending += 1
        self.producer.poll(0)

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for every delivery report; return the acks since the last flush or raise."""
        remaining = self.producer.flush(timeout_s)
        fatal = self._renew_if_fatal()
        if fatal is not None:
            remaining = 0  # the old producer's undelivered messages are failures now
        with self._lock:
            failures, self._failures = self._failures, []
            acked, self._acked = self._acked, 0
            pending = self._pending
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
        """Fail fast, with a message a person can act on, before anything is produced."""
        started = time.monotonic()
        check_broker(self.settings, timeout_s=timeout_s)
        try:
            metadata = self.producer.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            raise BrokerUnavailable(
                f"cannot reach Kafka at {self.settings.kafka_bootstrap} within {timeout_s:.0f}s: {exc}"
            ) from exc
        for topic in topics:
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None:
                raise TopicMissing(
                    f"topic {topic!r} does not exist on {self.settings.kafka_bootstrap}; "
                    "create it with `streamer topics create`"
                )
        log.debug("topics checked in %.3fs", time.monotonic() - started)

    def close(self, timeout_s: float = 30.0) -> None:
        if self._producer is None:
            return
        try:
            self.flush(timeout_s)
        finally:
            self._producer = None
