"""Replicator throughput against the dev stack: copies/s and bytes/s, same endpoint and another.

    streamer dev up && python -m benchmarks.replicate_bench --objects 400 --size-kib 64

GalleryUpdated records are published directly (encoded with the contract's codec), one per SKU
with one new image each, so the figure is the replicator's alone. The other endpoint is a
second moto server in its own process. Each case is then re-run by a new group on the same
destination with the records wiped: every image found identical by HEAD, no copy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import boto3

from streamer.contract.codec import Codec
from streamer.dev.stack import free_port
from streamer.ops.schema import migrate_all
from streamer.ops.topics import create_topics
from streamer.replicate.worker import replicate_runner
from streamer.runtime.database import connect
from streamer.runtime.metrics import new_registry
from streamer.runtime.publisher import Publisher
from streamer.settings import Settings, load_settings
from streamer.storage.keys import s3_key


def client(endpoint: str | None) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="streamer-dev",
        aws_secret_access_key="streamer-dev",
    )


def record(sku: str, path: str, etag: str, size: int) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "sku": sku,
        "version": 1,
        "occurred_at": datetime.now(UTC),
        "deleted": False,
        "source_event_ids": [],
        "request_ids": [],
        "images": [
            {
                "file_path": path,
                "etag": etag,
                "size": size,
                "content_type": "image/jpeg",
                "label": None,
                "position": 0,
                "disabled": False,
                "roles": [],
                "content_changed": True,
            }
        ],
        "removed": [],
        "content_changed": [path],
    }


async def drain(settings: Settings, ends: dict[tuple[str, int], int]) -> tuple[float, float, Any]:
    registry = new_registry()
    worker = replicate_runner(settings, registry=registry, install_signal_handlers=False)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    # The clock starts once the group has assigned partitions: joining is not replication.
    while not value(registry, "streamer_assigned_partitions"):
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    cpu0, t0 = time.process_time(), time.perf_counter()
    group = settings.replica.replica_group_id
    while True:
        if task.done():
            task.result()
        async with connect(settings.database.dsn) as conn:
            rows = await conn.fetch(
                "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = $1",
                group,
            )
        stored = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
        if all(stored.get(tp, -1) >= end for tp, end in ends.items()):
            break
        await asyncio.sleep(0.05)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    stop.set()
    await task
    return wall, cpu, registry


def value(registry: Any, name: str, **labels: str) -> float:
    return float(registry.get_sample_value(name, labels) or 0.0)


async def ceiling(settings: Settings, endpoint: str | None, n: int) -> None:
    """The servers' own rate for what one changed image costs (HEAD source, HEAD replica, copy),
    sent from a plain thread pool of the same size: what the replicator's figure stands beside."""
    from concurrent.futures import ThreadPoolExecutor

    source = client(settings.s3.s3_endpoint_url)
    replica = client(endpoint) if endpoint else source
    bucket, r = settings.s3.s3_bucket, settings.replica

    def one(i: int) -> None:
        path = f"/b/{i:06d}.jpg"
        key = s3_key(settings.s3.s3_prefix, path)
        source.head_object(Bucket=bucket, Key=key)
        replica.head_object(Bucket=r.replica_bucket, Key=s3_key(r.replica_prefix, path))
        if endpoint is None:
            replica.copy_object(
                Bucket=r.replica_bucket,
                Key=f"ceiling/{i}",
                CopySource={"Bucket": bucket, "Key": key},
            )
        else:
            body = source.get_object(Bucket=bucket, Key=key)["Body"].read()
            replica.put_object(Bucket=r.replica_bucket, Key=f"ceiling/{i}", Body=body)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(r.replica_concurrency) as pool:
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: list(pool.map(one, range(n)))
        )
    wall = time.perf_counter() - t0
    print(
        f"{'':<15} ceiling: the same requests from {r.replica_concurrency} threads: {n / wall:.0f} images/s"
    )


async def case(base: Settings, name: str, endpoint: str | None, n: int, size: int) -> None:
    run = uuid.uuid4().hex[:6]
    settings = base.replace(
        outcome_topic=f"bench-{run}.catalog.gallery.updated.v1",
        dlq_topic=f"bench-{run}.catalog.gallery.dlq",
        product_topic=f"bench-{run}.catalog.product.v1",
        media_topic=f"bench-{run}.catalog.media.v1",
        s3_prefix=f"bench-{run}/media",
        replica_bucket=f"bench-replica-{run}",
        replica_prefix="cdn",
        replica_group_id=f"bench-replicate-{run}",
        replica_endpoint_url=endpoint,
        replica_access_key_id="streamer-dev" if endpoint else None,
        replica_secret_access_key="streamer-dev" if endpoint else None,
        metrics_port=0,
        topic_partitions=4,
    )
    create_topics(settings)
    await migrate_all(settings.database.dsn)
    source = client(settings.s3.s3_endpoint_url)
    client(endpoint or settings.s3.s3_endpoint_url).create_bucket(
        Bucket=settings.replica.replica_bucket
    )
    codec, topic = Codec(), settings.topics.outcome_topic
    with Publisher(settings.kafka) as publisher:
        for i in range(n):
            body = os.urandom(size)
            path = f"/b/{i:06d}.jpg"
            resp = source.put_object(
                Bucket=settings.s3.s3_bucket,
                Key=s3_key(settings.s3.s3_prefix, path),
                Body=body,
                ContentType="image/jpeg",
            )
            etag = resp["ETag"].strip('"')
            value_ = codec.encode_outcome(record(f"B-{i:06d}", path, etag, size), topic=topic)
            publisher.produce(topic, value_, key=f"B-{i:06d}".encode())
        publisher.flush()
        ends = dict(publisher.end_offsets)
    wall, cpu, reg = await drain(settings, ends)
    await ceiling(settings, endpoint, n)
    copied = sum(
        value(reg, "streamer_replica_copies_total", mode=m) for m in ("server_side", "streamed")
    )
    moved = sum(
        value(reg, "streamer_replica_copied_bytes_total", mode=m)
        for m in ("server_side", "streamed")
    )
    print(
        f"{name:<15} first sync: {copied:.0f} copies in {wall:.1f}s = {copied / wall:.0f} copies/s, "
        f"{moved / wall / 1e6:.2f} MB/s, worker CPU {cpu / max(copied, 1) * 1000:.1f} ms per copy"
    )
    async with connect(settings.database.dsn) as conn:
        await conn.execute(
            "DELETE FROM replica_objects WHERE destination = $1",
            settings.replica.destination(settings.s3),
        )
        await conn.execute(
            "DELETE FROM replica_refs WHERE destination = $1",
            settings.replica.destination(settings.s3),
        )
        await conn.execute(
            "DELETE FROM replica_skus WHERE destination = $1",
            settings.replica.destination(settings.s3),
        )
    again = settings.replace(replica_group_id=settings.replica.replica_group_id + "-again")
    wall, cpu, reg = await drain(again, ends)
    identical = value(reg, "streamer_replica_images_total", result="identical")
    recopied = sum(
        value(reg, "streamer_replica_copies_total", mode=m) for m in ("server_side", "streamed")
    )
    print(
        f"{name:<15} re-sync (records wiped): {identical:.0f} identical by HEAD, {recopied:.0f} copies, "
        f"{identical / wall:.0f} images/s, worker CPU {cpu / max(identical, 1) * 1000:.1f} ms per image"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objects", type=int, default=400)
    parser.add_argument("--size-kib", type=int, default=64)
    args = parser.parse_args()
    settings = load_settings()
    size = args.size_kib * 1024
    await case(settings, "same endpoint", None, args.objects, size)
    port = free_port()
    other = subprocess.Popen(  # noqa: ASYNC220 - a server for the whole run
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                client(endpoint).list_buckets()
                break
            except Exception:  # noqa: BLE001 - not listening yet
                await asyncio.sleep(0.1)
        await case(settings, "other endpoint", endpoint, args.objects, size)
    finally:
        other.terminate()
        other.wait(timeout=10)


if __name__ == "__main__":
    asyncio.run(main())
