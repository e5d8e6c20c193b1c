"""Reading a topic back to its end without joining a group: dead letters, the relay's own topic."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from streamer.runtime.connection import check_broker
from streamer.runtime.errors import BrokerUnavailable
from streamer.runtime.settings import KafkaSettings

__all__ = ["read_messages"]

log = logging.getLogger(__name__)


# How long a topic absent from the metadata, or a partition without a leader, is asked for
# again before it counts as absent: a topic created moments before can be missing from the
# metadata of a broker the creation has not reached yet, or have partitions whose leaders
# are not elected yet.
_METADATA_SETTLE_S = 3.0


def _topic_metadata(consumer: Consumer, kafka: KafkaSettings, topic: str, timeout_s: float) -> Any:
    """The topic's metadata once it and every partition's leader are known; None when the
    topic is still absent after ``_METADATA_SETTLE_S``."""
    deadline = time.monotonic() + _METADATA_SETTLE_S
    while True:
        try:
            meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        except KafkaException as exc:
            raise BrokerUnavailable(
                f"cannot reach Kafka at {kafka.kafka_bootstrap}: {exc}"
            ) from exc
        settled = (
            meta is not None
            and meta.error is None
            and meta.partitions
            and all(p.error is None and p.leader >= 0 for p in meta.partitions.values())
        )
        if settled:
            return meta
        if time.monotonic() >= deadline:
            return meta if meta is not None and meta.error is None and meta.partitions else None
        time.sleep(0.2)


def read_messages(
    kafka: KafkaSettings,
    topic: str,
    *,
    start: Mapping[int, int] | None = None,
    timeout_s: float = 10.0,
    idle_s: float = 0.5,
    strict: bool = False,
) -> Iterator[Message]:
    """Every message of the topic, from each partition's ``start`` (else its low watermark) to its end.

    A plain assigned consumer: no group membership, nothing committed. High
    watermarks alone are not trusted as the end (the Tansu dev broker reports them
    short when records share a batch), so reading goes on past them until the topic
    stays quiet for ``idle_s``. ``timeout_s`` bounds the time without progress, not
    the whole read, so a large topic is read to the end; a read that stalls short of
    the watermarks stops with a warning naming the partitions left unread, or, when
    ``strict`` (a reader that must have seen everything), raises ``BrokerUnavailable``.
    """
    check_broker(kafka, timeout_s=timeout_s)
    consumer = Consumer(
        kafka.client_config(
            **{
                "group.id": f"streamer-reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "fetch.wait.max.ms": kafka.fetch_wait_max_ms,
                "enable.partition.eof": False,
            }
        )
    )
    try:
        meta = _topic_metadata(consumer, kafka, topic, timeout_s)
        if meta is None:
            return
        ends: dict[int, int] = {}
        positions: dict[int, int] = {}
        for p in meta.partitions:
            try:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=timeout_s
                )
            except KafkaException as exc:
                raise BrokerUnavailable(f"cannot read the offsets of {topic}[{p}]: {exc}") from exc
            ends[p] = high
            positions[p] = max(low, 0, (start or {}).get(p, 0))
        assignment = [TopicPartition(topic, p, offset) for p, offset in positions.items()]
        consumer.assign(assignment)
        quiet_since = time.monotonic()
        while True:
            batch = consumer.consume(500, 0.1)
            for msg in batch:
                if msg.error() is not None:
                    continue
                positions[msg.partition() or 0] = (msg.offset() or 0) + 1
                yield msg
            now = time.monotonic()
            if batch:
                quiet_since = now
                continue
            # The consumer's position also moves past records it never hands out
            # (transaction markers), which message offsets alone would miss.
            for tp in consumer.position(assignment):
                if tp.offset >= 0:
                    positions[tp.partition] = max(positions[tp.partition], tp.offset)
            short = {p: (positions[p], end) for p, end in ends.items() if positions[p] < end}
            if not short and now - quiet_since >= idle_s:
                return
            if now - quiet_since >= timeout_s:
                unread = ", ".join(
                    f"[{p}] at {at} of {end}" for p, (at, end) in sorted(short.items())
                )
                if strict:
                    raise BrokerUnavailable(f"reading {topic} stalled short of its end: {unread}")
                log.warning(
                    "reading %s stalled for %.0fs short of its end: %s", topic, timeout_s, unread
                )
                return
    finally:
        consumer.close()
