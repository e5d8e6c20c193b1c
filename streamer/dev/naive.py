"""A naive consumer, written the way the seeds' connectors work, for the benchmark's baseline.

Per message: decode and validate it, send one HEAD per image through boto3, open one
transaction to read the SKU's stored images and write what changed, commit it, then
commit the message's offset to Kafka before reading the next. Nothing is batched,
nothing overlaps. It reads the same topic as the streamer phase it is compared with.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streamer.contract.codec import Codec
from streamer.contract.events import MediaGalleryChanged
from streamer.runtime.database import connect
from streamer.settings import Settings
from streamer.storage.clients import make_s3_client
from streamer.storage.keys import s3_key

__all__ = ["NaiveResult", "run_naive"]

_STORED = "SELECT file_path, etag, label, position, disabled FROM gallery_images WHERE sku = $1"
_UPSERT = """
INSERT INTO gallery_images (sku, file_path, etag, size_bytes, label, position, disabled)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (sku, file_path) DO UPDATE SET etag = EXCLUDED.etag, size_bytes = EXCLUDED.size_bytes,
    label = EXCLUDED.label, position = EXCLUDED.position, disabled = EXCLUDED.disabled
"""


@dataclass
class NaiveResult:
    events: int = 0
    images: int = 0
    heads: int = 0
    rows_written: int = 0


async def run_naive(
    settings: Settings,
    starts: dict[tuple[str, int], int],
    limit: int,
    *,
    progress: Callable[[int], None] | None = None,
    ready: Callable[[], None] | None = None,
    timeout_s: float = 900,
) -> NaiveResult:
    """Consume up to ``limit`` messages from ``starts`` (partition -> offset), one at a time.
    ``ready`` is called once its clients are made and its partitions assigned, before the
    first message: where a benchmark's clock starts, as it does for streamer's phases."""
    codec = Codec.for_registry(settings.kafka.schema_registry_url)
    s3 = make_s3_client(settings.s3, max_pool_connections=1)
    bucket, prefix = settings.s3.s3_bucket, settings.s3.s3_prefix
    consumer = Consumer(
        settings.kafka.client_config(
            **{
                "group.id": f"{settings.gallery.group_id}-naive",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": settings.kafka.fetch_wait_max_ms,
                "session.timeout.ms": settings.kafka.session_timeout_ms,
            }
        )
    )
    result = NaiveResult()
    deadline = time.monotonic() + timeout_s
    consumer.assign([TopicPartition(t, p, offset) for (t, p), offset in starts.items()])
    try:
        async with connect(settings.database.dsn) as conn:
            if ready is not None:
                ready()
            while result.events < limit and time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None or msg.error() is not None:
                    continue
                event = codec.decode_event(msg.value())
                if not isinstance(event, MediaGalleryChanged):
                    continue
                found: dict[str, Any] = {}
                for image in event.images:
                    head = s3.head_object(Bucket=bucket, Key=s3_key(prefix, image.file_path))
                    found[image.file_path] = head
                    result.heads += 1
                async with conn.transaction():
                    stored = {r["file_path"]: r for r in await conn.fetch(_STORED, event.sku)}
                    for image in event.images:
                        etag = str(found[image.file_path]["ETag"]).strip('"')
                        old = stored.get(image.file_path)
                        if old is not None and (
                            old["etag"],
                            old["label"],
                            old["position"],
                            old["disabled"],
                        ) == (etag, image.label, image.position, image.disabled):
                            continue
                        await conn.execute(
                            _UPSERT,
                            event.sku,
                            image.file_path,
                            etag,
                            int(found[image.file_path]["ContentLength"]),
                            image.label,
                            image.position,
                            image.disabled,
                        )
                        result.rows_written += 1
                consumer.commit(message=msg, asynchronous=False)
                result.events += 1
                result.images += len(event.images)
                if progress is not None:
                    progress(1)
    finally:
        with contextlib.suppress(KafkaException):
            consumer.close()
    return result
