"""What `streamer status` reports: lag per partition, dead letters by reason, a request's outcomes."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streamer.runtime.connection import check_broker
from streamer.runtime.database import connect
from streamer.runtime.errors import BrokerUnavailable
from streamer.runtime.replay import read_dead_letters
from streamer.runtime.settings import KafkaSettings
from streamer.settings import Settings
from streamer.tracking.store import latest_bulk_of_request, load_bulk

__all__ = ["PartitionLag", "collect_status", "group_lag"]


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None
    high_watermark: int
    lag: int


def group_lag(
    kafka: KafkaSettings, group_id: str, topics: list[str], *, timeout_s: float = 10.0
) -> list[PartitionLag]:
    """Committed offsets of the group against high watermarks, without joining the group."""
    check_broker(kafka, timeout_s=timeout_s)
    consumer = Consumer(kafka.client_config(**{"group.id": group_id, "enable.auto.commit": False}))
    try:
        try:
            metadata = consumer.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            raise BrokerUnavailable(
                f"cannot reach Kafka at {kafka.kafka_bootstrap}: {exc}"
            ) from exc
        parts = [
            TopicPartition(t, p)
            for t in topics
            if t in metadata.topics
            for p in sorted(metadata.topics[t].partitions)
        ]
        committed = {
            (tp.topic, tp.partition): tp.offset
            for tp in consumer.committed(parts, timeout=timeout_s)
        }
        out = []
        for tp in parts:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s)
            done = committed.get((tp.topic, tp.partition), -1)
            position = done if done is not None and done >= 0 else low
            out.append(
                PartitionLag(
                    tp.topic,
                    tp.partition,
                    done if done >= 0 else None,
                    high,
                    max(0, high - position),
                )
            )
        return out
    finally:
        consumer.close()


async def _request(settings: Settings, request_id: str) -> dict[str, Any]:
    async with connect(settings.database.dsn) as conn:
        counts = await conn.fetch(
            "SELECT outcome, events FROM request_outcomes WHERE request_id = $1 ORDER BY outcome",
            request_id,
        )
        failed = await conn.fetch(
            "SELECT event_id::text AS event_id, sku, outcome, reason FROM event_outcomes "
            "WHERE request_id = $1 AND outcome IN ('partial', 'dead_lettered') ORDER BY recorded_at",
            request_id,
        )
        # Bulks taken in by `streamer serve`: what GET /v1/bulks?request_id= shows.
        bulks = [
            b
            for bulk_uuid in await latest_bulk_of_request(conn, request_id)
            if (b := await load_bulk(conn, bulk_uuid)) is not None
        ]
    return {
        "request_id": request_id,
        "found": bool(counts or failed or bulks),
        "outcomes": {r["outcome"]: r["events"] for r in counts},
        "failed": [dict(r) for r in failed],
        "bulks": bulks,
    }


def collect_status(settings: Settings, *, request_id: str | None = None) -> dict[str, Any]:
    group_id = settings.gallery.group_id
    lag = group_lag(
        settings.kafka, group_id, [settings.topics.product_topic, settings.topics.media_topic]
    )
    dead = Counter(r.reason for r in read_dead_letters(settings.kafka, settings.runtime.dlq_topic))
    report: dict[str, Any] = {
        "group_id": group_id,
        "lag": [vars(p) for p in lag],
        "total_lag": sum(p.lag for p in lag),
        "dead_letters": dict(dead.most_common()),
    }
    if request_id is not None:
        report["request"] = asyncio.run(_request(settings, request_id))
    return report
