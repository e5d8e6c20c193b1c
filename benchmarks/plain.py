"""A competent plain consumer, the baseline a skeptic asks for: what a good engineer writes in
a day with confluent-kafka, boto3 and asyncpg, without streamer.

Per batch of up to ``batch`` messages: decode and validate each (the contract's own models),
HEAD every distinct object of the batch concurrently (a boto3 client shared by a thread
pool, as boto3's documentation allows for clients), then one transaction reads the
batch's SKUs' stored images, upserts those that differ and commits; then the batch's
offsets are committed to Kafka, synchronously. At least once: a crash between the
transaction and the offset commit applies the batch again (its upserts are idempotent).
It writes its own table (``LIKE gallery_images``) so it starts from nothing whatever
streamer's phases stored. Not part of the package: ``benchmarks/suite.py`` runs it as
``plain_first_sync`` and ``plain_noop_resync`` beside streamer's phases.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streamer.contract.codec import Codec
from streamer.contract.events import MediaGalleryChanged
from streamer.runtime.database import connect
from streamer.settings import Settings
from streamer.storage.clients import make_s3_client
from streamer.storage.keys import s3_key

__all__ = ["PlainResult", "run_plain"]

_STORED = """
SELECT sku, file_path, etag, label, position, disabled FROM {table} WHERE sku = ANY($1::text[])
"""
_UPSERT = """
INSERT INTO {table} (sku, file_path, etag, size_bytes, label, position, disabled, roles)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (sku, file_path) DO UPDATE SET etag = EXCLUDED.etag,
    size_bytes = EXCLUDED.size_bytes, label = EXCLUDED.label, position = EXCLUDED.position,
    disabled = EXCLUDED.disabled, roles = EXCLUDED.roles
"""


@dataclass
class PlainResult:
    events: int = 0
    images: int = 0
    heads: int = 0
    rows_written: int = 0
    # Each batch's transaction commit time and [first, next) offsets per partition, as
    # streamer's pipeline reports its own (``streamer.dev.bench.Commit``): for the latency.
    commits: list[tuple[float, list[tuple[str, int, int, int]]]] = field(default_factory=list)


def _all(pool: ThreadPoolExecutor, head: Callable[[str], Any], keys: set[str]) -> list[Any]:
    return list(pool.map(head, keys))


async def create_table(settings: Settings, table: str) -> None:
    async with connect(settings.database.dsn) as conn:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (LIKE gallery_images INCLUDING ALL)"
        )


async def drop_table(settings: Settings, table: str) -> None:
    async with connect(settings.database.dsn) as conn:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")


async def run_plain(
    settings: Settings,
    table: str,
    starts: dict[tuple[str, int], int],
    ends: dict[tuple[str, int], int],
    *,
    batch: int = 500,
    head_threads: int = 32,
    ready: Callable[[], None] | None = None,
    progress: Callable[[int], None] | None = None,
    timeout_s: float = 900,
) -> PlainResult:
    """Consume each partition's messages in [starts, ends) in batches (each partition is
    paused at its end: the topic holds later phases' messages too)."""
    codec = Codec.for_registry(settings.kafka.schema_registry_url)
    s3 = make_s3_client(settings.s3, max_pool_connections=head_threads)
    bucket, prefix = settings.s3.s3_bucket, settings.s3.s3_prefix
    consumer = Consumer(
        settings.kafka.client_config(
            **{
                "group.id": f"{settings.gallery.group_id}-plain",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": settings.kafka.fetch_wait_max_ms,
            }
        )
    )

    def head(key: str) -> tuple[str, dict[str, Any]]:
        return key, s3.head_object(Bucket=bucket, Key=key)

    result = PlainResult()
    deadline = time.monotonic() + timeout_s
    consumer.assign([TopicPartition(t, p, starts.get((t, p), 0)) for (t, p) in ends])
    left = {tp for tp, end in ends.items() if end > starts.get(tp, 0)}
    limit = sum(end - starts.get(tp, 0) for tp, end in ends.items())
    stored_sql, upsert_sql = _STORED.format(table=table), _UPSERT.format(table=table)
    try:
        with ThreadPoolExecutor(head_threads) as pool:
            async with connect(settings.database.dsn) as conn:
                if ready is not None:
                    ready()
                while left and time.monotonic() < deadline:
                    messages = await asyncio.to_thread(
                        consumer.consume, min(batch, limit - result.events), 0.5
                    )
                    events: list[MediaGalleryChanged] = []
                    offsets: dict[tuple[str, int], int] = {}
                    firsts: dict[tuple[str, int], int] = {}
                    consumed = 0
                    ended: list[TopicPartition] = []
                    for msg in messages:
                        tp = (msg.topic() or "", msg.partition() or 0)
                        if msg.error() is not None or tp not in left:
                            continue
                        if (msg.offset() or 0) + 1 >= ends[tp]:
                            left.discard(tp)
                            ended.append(TopicPartition(*tp))
                        consumed += 1
                        firsts.setdefault(tp, msg.offset() or 0)
                        offsets[tp] = (msg.offset() or 0) + 1
                        event = codec.decode_event(msg.value())
                        if isinstance(event, MediaGalleryChanged):
                            events.append(event)
                    if ended:
                        consumer.pause(ended)
                    if not offsets:
                        continue
                    keys = {s3_key(prefix, i.file_path) for e in events for i in e.images}
                    found = dict(await asyncio.to_thread(_all, pool, head, keys))
                    result.heads += len(keys)
                    async with conn.transaction():
                        rows = await conn.fetch(stored_sql, [e.sku for e in events])
                        stored = {
                            (r["sku"], r["file_path"]): (
                                r["etag"],
                                r["label"],
                                r["position"],
                                r["disabled"],
                            )
                            for r in rows
                        }
                        changed = []
                        for e in events:
                            for image in e.images:
                                obj = found[s3_key(prefix, image.file_path)]
                                etag = str(obj["ETag"]).strip('"')
                                now = (etag, image.label, image.position, image.disabled)
                                if stored.get((e.sku, image.file_path)) != now:
                                    changed.append(
                                        (
                                            e.sku,
                                            image.file_path,
                                            etag,
                                            int(obj["ContentLength"]),
                                            image.label,
                                            image.position,
                                            image.disabled,
                                            list(image.roles),
                                        )
                                    )
                        if changed:
                            await conn.executemany(upsert_sql, changed)
                    result.commits.append(
                        (time.time(), [(t, p, firsts[t, p], o) for (t, p), o in offsets.items()])
                    )
                    result.rows_written += len(changed)
                    await asyncio.to_thread(
                        consumer.commit,
                        offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                        asynchronous=False,
                    )
                    result.events += consumed
                    result.images += sum(len(e.images) for e in events)
                    if progress is not None:
                        progress(consumed)
    finally:
        with contextlib.suppress(KafkaException):
            consumer.close()
    return result
