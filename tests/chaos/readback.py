"""The harness's own read of a whole topic: a plain consumer, no streamer code.

What the dead-letter and outcome topics hold is the evidence the run's checks stand on
(what a replay must bring back, which dead letters were sent), so it is not read through
the product's read-back (``streamer.runtime.readback``) that the product's replay uses:
a read of theirs that stopped short would otherwise pass unseen.

A partition is read to its end when the consumer reached the end the broker reports
(a partition EOF) at or past the high watermark read after the last record, and the
whole topic then stayed quiet for ``quiet_s``: a broker's watermark may lag behind what
it serves (Tansu 0.6 was seen to report them short), so neither alone is trusted.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

__all__ = ["Record", "read_topic"]


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def read_topic(
    bootstrap: str, topic: str, *, quiet_s: float = 1.5, timeout_s: float = 120.0
) -> list[Record]:
    """Every record of ``topic``, partition by partition in offset order. Raises
    ``TimeoutError`` when the read makes no progress for ``timeout_s`` short of its end."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"chaos-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 100,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=30).topics.get(topic)
        if meta is None or meta.error is not None:
            raise RuntimeError(f"topic {topic} not found: {meta.error if meta else None}")
        partitions = sorted(meta.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        records: list[Record] = []
        at = dict.fromkeys(partitions, 0)  # next offset to read
        at_eof: set[int] = set()
        last_progress = quiet_since = time.monotonic()
        while True:
            msg = consumer.poll(0.2)
            now = time.monotonic()
            if msg is None:
                if at_eof == set(partitions) and now - quiet_since >= quiet_s:
                    short = _short_of_watermarks(consumer, topic, at)
                    if not short:
                        return records
                    at_eof -= set(short)
                if now - last_progress > timeout_s:
                    raise TimeoutError(
                        f"reading {topic} made no progress for {timeout_s:.0f}s; partitions at"
                        f" {at}, at their end: {sorted(at_eof)}"
                    )
                continue
            partition = msg.partition() or 0
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_eof.add(partition)
                    continue
                raise KafkaException(error)
            offset = msg.offset() or 0
            records.append(
                Record(
                    partition,
                    offset,
                    msg.key(),
                    msg.value(),
                    _headers(msg.headers()),
                )
            )
            at[partition] = offset + 1
            at_eof.discard(partition)
            last_progress = quiet_since = now
    finally:
        consumer.close()


def _headers(raw: Any) -> dict[str, bytes]:
    """A consumed message's headers: a list of (name, value) pairs, as librdkafka gives them."""
    return {str(name): bytes(value or b"") for name, value in raw or []}


def _short_of_watermarks(consumer: Consumer, topic: str, at: dict[int, int]) -> list[int]:
    short = []
    for partition, offset in at.items():
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
        if offset < high:
            short.append(partition)
    return short
