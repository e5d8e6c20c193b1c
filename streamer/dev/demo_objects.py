"""The demo's object-index step: an image overwritten in S3 reaches its gallery's
``GalleryUpdated`` with no upstream event (``streamer objects consume`` on the dev stack's
SQS queue, which moto's bucket notifies of every put and delete)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, TopicPartition

from streamer.contract.codec import Codec
from streamer.objects.worker import objects_runner
from streamer.runtime.metrics import new_registry
from streamer.settings import Settings
from streamer.storage.keys import s3_key

if TYPE_CHECKING:
    from streamer.dev.demo import Demo

__all__ = ["show_objects"]


async def _until(done: Callable[[], Awaitable[bool]], timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await done():
            return True
        await asyncio.sleep(0.05)
    return False


def _updates(settings: Settings, sku: str) -> list[dict[str, Any]]:
    """The ``GalleryUpdated`` records of one SKU on the outcome topic, oldest first."""
    topic = settings.topics.outcome_topic
    consumer = Consumer(
        settings.kafka.client_config(
            **{"group.id": f"demo-read-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False}
        )
    )
    codec = Codec.for_registry(settings.kafka.schema_registry_url)
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        out: list[dict[str, Any]] = []
        read = dict.fromkeys(partitions, 0)
        deadline = time.monotonic() + 10
        while any(read[p] < ends[p] for p in partitions) and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.2):
                if msg.error() is not None:
                    continue
                read[msg.partition() or 0] = (msg.offset() or 0) + 1
                if msg.key() == sku.encode():
                    out.append(codec.decode(msg.value()).data)
        return out
    finally:
        consumer.close()


async def show_objects(demo: Demo, step: int, skus: list[str]) -> None:
    c, s = demo.checks, demo.settings
    demo.step(step, "An image overwritten in S3 reaches its gallery with no upstream event")
    if not s.objects.objects_sqs_url:
        c.check(False, "the dev stack has no notification queue (STREAMER_OBJECTS_SQS_URL)")
        return
    settings = s.replace(objects_sqs_wait_s=1)
    source = objects_runner(settings, registry=new_registry(), install_signal_handlers=False)
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop))
    target = skus[6]  # a gallery no earlier step changed
    path = f"/{target[-2:]}/{target.lower()}-3.png"
    key = s3_key(s.s3.s3_prefix, path)
    try:

        async def indexed(etag: str | None = None) -> bool:
            if task.done():
                task.result()
            rows = await demo._sql(
                "SELECT etag FROM objects WHERE bucket = $1 AND key = $2", s.s3.s3_bucket, key
            )
            return bool(rows) and (etag is None or rows[0]["etag"] == etag)

        ready = await _until(indexed)
        c.check(ready, f"bucket notifications indexed from SQS ({source.stats.messages} so far)")
        before = (await demo.rows_of(target))[path]
        started = time.monotonic()
        new_etag = demo.upload(target, 3, revision=2)

        async def followed() -> bool:
            if task.done():
                task.result()
            row = (await demo.rows_of(target)).get(path)
            return row is not None and row["etag"] == new_etag

        ok = await _until(followed)
        seconds = time.monotonic() - started
        updates = await asyncio.to_thread(_updates, s, target)
        changed = [u for u in updates if u["content_changed"] == [path]]
        after = (await demo.rows_of(target))[path]
        c.check(
            ok and after["content_version"] == before["content_version"] + 1,
            f"{path} overwritten in S3: content_version {before['content_version']} → "
            f"{after['content_version']} in {seconds:.2f}s, no event published upstream",
        )
        c.check(
            len(changed) == 1,
            f"GalleryUpdated for {target} with content_changed = {path} "
            f"({len(changed)} such record: what a CDN purge needs)",
        )
        rechecked = demo.counter("streamer_gallery_rechecks_total", result="changed")
        c.check(rechecked >= 1, f"galleries re-checked by object changes: {rechecked:.0f}")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)
