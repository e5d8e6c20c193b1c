"""The object index against the dev stack: notifications indexed per second (Kafka source) and
the latency from an overwrite in S3 to its gallery's ``GalleryUpdated`` (SQS source).

    streamer dev up && python -m benchmarks.objects_bench --notifications 20000 --overwrites 20

1. ``--notifications`` MinIO-format records (distinct keys) are published to a topic of the
   run's own, then one ``objects consume`` worker drains them: records/s from its start.
2. ``--overwrites`` SKUs get one image each through the gallery worker (``STREAMER_ETAG_SOURCE
   =index``); then each image is overwritten in moto, one after another, with
   ``objects consume`` reading the dev stack's SQS queue: the time from ``put_object``
   returning to the SKU's ``GalleryUpdated`` (content_changed) read from the outcome topic.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import time
import uuid
from datetime import UTC, datetime

from confluent_kafka import Consumer, TopicPartition

from streamer.contract.codec import Codec
from streamer.contract.events import MediaGalleryChanged
from streamer.contract.publishing import EventPublisher
from streamer.gallery.worker import gallery_runner
from streamer.objects.worker import objects_runner
from streamer.ops.schema import migrate_all
from streamer.ops.topics import create_topics
from streamer.runtime.metrics import new_registry
from streamer.runtime.publisher import Publisher
from streamer.settings import Settings, load_settings
from streamer.storage.clients import make_s3_client
from streamer.storage.keys import s3_key


def record(bucket: str, key: str, etag: str) -> bytes:
    rec = {
        "eventName": "s3:ObjectCreated:Put",
        "eventTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "eTag": etag, "size": 10}},
    }
    return json.dumps(
        {"EventName": rec["eventName"], "Key": f"{bucket}/{key}", "Records": [rec]}
    ).encode()


async def notifications_per_s(settings: Settings, n: int) -> float:
    bucket, topic = settings.s3.s3_bucket, settings.objects.objects_topic
    with Publisher(settings.kafka) as publisher:
        for i in range(n):
            key = f"bench-objects/{i:08d}.jpg"
            publisher.produce(
                topic, record(bucket, key, f"{i:032x}"), key=f"{bucket}/{key}".encode()
            )
        publisher.flush()
    worker = objects_runner(
        settings.replace(objects_sqs_url=None),  # the topic, not the dev stack's queue
        registry=new_registry(),
        install_signal_handlers=False,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))

    def taken() -> float:
        sample = worker.registry.get_sample_value
        name = "streamer_object_notifications_total"
        return sum(sample(name, {"result": r}) or 0.0 for r in ("indexed", "not_newer"))

    try:
        while not worker.registry.get_sample_value("streamer_assigned_partitions"):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        started = time.monotonic()
        while taken() < n:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        return n / (time.monotonic() - started)
    finally:
        stop.set()
        await task


SEEN: set[tuple[str, str]] = set()  # (sku, etag) of every GalleryUpdated read so far


def updated_after(consumer: Consumer, codec: Codec, sku: str, etag: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while (sku, etag) not in SEEN and time.monotonic() < deadline:
        for msg in consumer.consume(100, 0.005):
            if msg.error() is None:
                data = codec.decode(msg.value()).data
                if data["content_changed"]:
                    SEEN.add((data["sku"], data["images"][0]["etag"]))
    return (sku, etag) in SEEN


async def overwrite_latency(settings: Settings, n: int) -> list[float]:
    s3 = make_s3_client(settings.s3)
    codec = Codec.for_registry(settings.kafka.schema_registry_url)
    run = uuid.uuid4().hex[:6]
    skus = [f"LAT-{run}-{i:03d}" for i in range(n)]
    path = {sku: f"/lat/{sku.lower()}.jpg" for sku in skus}
    bucket, prefix = settings.s3.s3_bucket, settings.s3.s3_prefix
    for sku in skus:
        s3.put_object(Bucket=bucket, Key=s3_key(prefix, path[sku]), Body=f"{sku} v1".encode())
    with Publisher(settings.kafka) as publisher:
        events = EventPublisher(publisher, codec, settings.topics)
        for sku in skus:
            events.publish(
                MediaGalleryChanged.model_validate(
                    {
                        "event_id": str(uuid.uuid4()),
                        "sku": sku,
                        "version": 1,
                        "occurred_at": datetime.now(UTC),
                        "source": "bench",
                        "images": [{"file_path": path[sku]}],
                    }
                )
            )
        publisher.flush()
    topic = settings.topics.outcome_topic
    consumer = Consumer(
        settings.kafka.client_config(**{"group.id": f"lat-{run}", "fetch.wait.max.ms": 5})
    )
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    stop = asyncio.Event()
    gallery = gallery_runner(settings, registry=new_registry(), install_signal_handlers=False)
    source = objects_runner(settings, registry=new_registry(), install_signal_handlers=False)
    tasks = [asyncio.create_task(gallery.run(stop)), asyncio.create_task(source.run(stop))]
    try:
        for sku in skus:  # the first sync, then the queue quiet
            first = hashlib.md5(f"{sku} v1".encode()).hexdigest()
            assert await asyncio.to_thread(updated_after, consumer, codec, sku, first, 60)
        await asyncio.sleep(3)
        latencies = []
        for sku in skus:
            body = f"{sku} v2".encode()
            started = time.monotonic()
            await asyncio.to_thread(
                s3.put_object, Bucket=bucket, Key=s3_key(prefix, path[sku]), Body=body
            )
            etag = hashlib.md5(body).hexdigest()
            assert await asyncio.to_thread(updated_after, consumer, codec, sku, etag, 60), sku
            latencies.append(time.monotonic() - started)
        return latencies
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        consumer.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--notifications", type=int, default=20000)
    parser.add_argument("--overwrites", type=int, default=20)
    args = parser.parse_args()
    run = uuid.uuid4().hex[:6]
    settings = load_settings().replace(
        product_topic=f"objbench-{run}.catalog.product.v1",
        media_topic=f"objbench-{run}.catalog.media.v1",
        outcome_topic=f"objbench-{run}.catalog.gallery.updated.v1",
        dlq_topic=f"objbench-{run}.catalog.gallery.dlq",
        objects_topic=f"objbench-{run}.catalog.objects.v1",
        objects_group_id=f"objbench-{run}",
        group_id=f"objbench-{run}",
        etag_source="index",
        objects_sqs_wait_s=1,
        metrics_port=0,
    )
    create_topics(settings)
    await migrate_all(settings.database.dsn)
    rate = await notifications_per_s(settings, args.notifications)
    print(f"objects consume (Kafka source): {args.notifications:,} notifications at {rate:,.0f}/s")
    if not settings.objects.objects_sqs_url:
        print("no STREAMER_OBJECTS_SQS_URL (dev up writes it): latency not measured")
        return
    lat = await overwrite_latency(settings, args.overwrites)
    print(
        f"overwrite in S3 -> GalleryUpdated read (SQS source): n={len(lat)}, "
        f"p50 {statistics.median(lat) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
