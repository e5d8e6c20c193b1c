"""Helpers for the replicator's tests: a destination bucket, the real gallery chain, drains."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import boto3
from prometheus_client import CollectorRegistry

from streamer.replicate.worker import replicate_runner
from streamer.runtime.metrics import new_registry
from streamer.settings import Settings
from tests.integration.support import Sender, fetch, read_topic, run_until_drained, wait_for


def client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="streamer-dev",
        aws_secret_access_key="streamer-dev",
    )


def with_replica(settings: Settings, endpoint: str | None = None, **more: Any) -> Settings:
    """The test's settings plus a destination bucket of its own (created here)."""
    bucket = f"replica-{uuid.uuid4().hex[:10]}"
    client(endpoint or settings.s3.s3_endpoint_url or "").create_bucket(Bucket=bucket)
    return settings.replace(
        replica_bucket=bucket,
        replica_prefix="cdn/images",
        replica_group_id=f"r-{uuid.uuid4().hex[:8]}",
        replica_endpoint_url=endpoint,
        replica_access_key_id="streamer-dev" if endpoint else None,
        replica_secret_access_key="streamer-dev" if endpoint else None,
        **more,
    )


def replica_state(settings: Settings, endpoint: str | None = None) -> dict[str, tuple[str, str]]:
    """Every destination object under the prefix: path -> (source ETag recorded, content type)."""
    s3 = client(endpoint or settings.replica.replica_endpoint_url or settings.s3.s3_endpoint_url)
    r = settings.replica
    prefix = r.replica_prefix.strip("/")
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=r.replica_bucket, Prefix=prefix + "/"
    ):
        for obj in page.get("Contents", []):
            head = s3.head_object(Bucket=r.replica_bucket, Key=obj["Key"])
            out[obj["Key"][len(prefix) :]] = (
                head["Metadata"].get("streamer-source-etag", head["ETag"].strip('"')),
                head.get("ContentType", ""),
            )
    return out


async def gallery_chain(settings: Settings, events: list[Any]) -> None:
    """Publish source events and run the real gallery worker until it has drained them."""
    sender = Sender(settings)
    sender.send(events)
    await run_until_drained(settings, sender.ends, timeout_s=120)


def outcome_ends(settings: Settings) -> dict[tuple[str, int], int]:
    ends: dict[tuple[str, int], int] = {}
    for msg in read_topic(settings, settings.topics.outcome_topic):
        tp = (msg.topic(), msg.partition())
        ends[tp] = max(ends.get(tp, 0), msg.offset() + 1)
    return ends


async def replica_offsets(settings: Settings) -> dict[tuple[str, int], int]:
    rows = await fetch(
        settings,
        "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = $1",
        settings.replica.replica_group_id,
    )
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


async def replicated(settings: Settings, ends: dict[tuple[str, int], int]) -> bool:
    stored = await replica_offsets(settings)
    if not all(stored.get(tp, -1) >= end for tp, end in ends.items()):
        return False
    pending = await fetch(
        settings, "SELECT count(*) AS n FROM replica_objects WHERE state = 'deleting'"
    )
    return bool(pending[0]["n"] == 0)


@asynccontextmanager
async def running_replicator(
    settings: Settings, registry: CollectorRegistry | None = None
) -> AsyncIterator[tuple[Any, asyncio.Task[Any]]]:
    worker = replicate_runner(
        settings, registry=registry or new_registry(), install_signal_handlers=False
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker, task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)


async def replicate_all(settings: Settings, *, timeout_s: float = 120) -> CollectorRegistry:
    """Run a replicator until it has consumed the whole outcome topic and deleted what it marked."""
    ends = outcome_ends(settings)
    registry = new_registry()
    async with running_replicator(settings, registry) as (_worker, task):

        async def done() -> bool:
            if task.done():
                task.result()
            return await replicated(settings, ends)

        await wait_for(done, timeout_s=timeout_s, what="the replicator to drain the outcome topic")
    return registry


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def copies(registry: CollectorRegistry) -> float:
    return sum(
        sample(registry, "streamer_replica_copies_total", mode=m)
        for m in ("server_side", "streamed")
    )
