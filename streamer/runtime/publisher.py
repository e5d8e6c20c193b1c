"""The producing side: delivery-checked Kafka producing for the runtime, the CLI and the API.

Keyed by SKU with the ``murmur2_random`` partitioner (Java-compatible placement),
idempotent (``enable.idempotence``, ``acks=all``). Delivery reports are collected
and ``flush`` raises a ``DeliveryError`` for any message the broker did not
acknowledge: a failed delivery is an error the caller sees, never a log line.
A full local queue is back-pressure (poll and retry), never a drop. A caller that
must know the fate of each message (the intake API, answering for every item of a
request while other requests share the producer) passes ``on_delivery``: that
message's report then goes to the caller instead of ``flush``'s account.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
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

__all__ = ["DeliveryFailure", "DeliveryReport", "Publisher"]

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
            text = err.str()
            if err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                text = denied(self.settings, "Write", f"topic {msg.topic()!r}")
            self._failures.append(
                DeliveryFailure(msg.topic(), msg.key(), text, bool(err.retriable()))
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
        while True:
            try:
                self.producer.produce(topic, value, key, **kwargs)
                break
            except BufferError:
                self.producer.poll(0.1)  # the local queue is full: wait for deliveries
            except KafkaException as exc:
                raise DeliveryRefused(f"cannot produce to {topic}: {exc}") from exc
        with self._lock:
            self._pending += 1
        self.producer.poll(0)

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for every delivery report; return the acks since the last flush or raise."""
        remaining = self.producer.flush(timeout_s)
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
            if all(f.retriable for f in failures):
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
