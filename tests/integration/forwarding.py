"""Helpers for the forwarder's tests: outcome events on a real broker, a forwarder worker
in process, and the comparison of what a real receiver recorded with what was published."""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from streamer.dev.receiver import Receiver
from streamer.forward.worker import forward_runner
from streamer.runtime.metrics import new_registry
from streamer.settings import Settings
from tests.integration.support import Sender, prepare, stored_offsets, wait_for


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


@dataclass(frozen=True)
class Published:
    event_id: str
    sku: str
    version: int


def outcome(sku: str, version: int, *, deleted: bool = False) -> dict[str, Any]:
    """A GalleryUpdated record as the gallery job publishes it."""
    path = f"/{sku[-2:]}/{sku.lower()}-1.jpg"
    return {
        "event_id": str(uuid.uuid4()),
        "sku": sku,
        "version": version,
        "occurred_at": datetime.now(UTC),
        "deleted": deleted,
        "source_event_ids": [str(uuid.uuid4())],
        "request_ids": ["req-1"],
        "images": []
        if deleted
        else [
            {
                "file_path": path,
                "etag": "0cc175b9c0f1b6a831c399e269772661",
                "size": 1234,
                "content_type": "image/jpeg",
                "label": f"{sku} front",
                "position": 1,
                "disabled": False,
                "roles": ["image", "small_image"],
                "content_changed": True,
            }
        ],
        "removed": [],
        "content_changed": [] if deleted else [path],
    }


class Outcomes:
    """Publishes GalleryUpdated events keyed by SKU and remembers what it published."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sender = Sender(settings)
        self.published: list[Published] = []

    @property
    def topic(self) -> str:
        return self.settings.topics.outcome_topic

    def publish(self, skus: list[str], *, versions: int = 1, start: int = 1) -> list[Published]:
        out = []
        for v in range(start, start + versions):
            for sku in skus:
                record = outcome(sku, v)
                value = self.sender.codec.encode_outcome(record, topic=self.topic)
                self.sender.raw(self.topic, sku.encode(), value)
                out.append(Published(record["event_id"], sku, v))
        self.sender.flush()
        self.published += out
        return out

    def raw(self, key: bytes, value: bytes) -> None:
        self.sender.raw(self.topic, key, value)
        self.sender.flush()


def forward_settings(make_settings: Any, receiver: Receiver, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "webhook_url": receiver.url,
        "webhook_secret": SECRET,
        "webhook_timeout_s": 2.0,
        "webhook_rate_per_s": 0,
        "webhook_max_attempts": 3,
        "circuit_reset_timeout_s": 0.3,
        "retry_max_attempts": 3,
        "topic_partitions": 2,
    }
    values.update(overrides)
    settings: Settings = make_settings(**values)
    prepare(settings)
    return settings


SECRET = new_secret()


async def forward_drained(settings: Settings, ends: dict[tuple[str, int], int]) -> bool:
    stored = await stored_offsets(settings.replace(group_id=settings.forward.forward_group_id))
    return all(stored.get(tp, -1) >= end for tp, end in ends.items())


@dataclass
class Running:
    """A forwarder worker running in this process."""

    worker: Any
    task: asyncio.Task[Any]
    settings: Settings

    async def drained(self, outcomes: Outcomes, timeout_s: float = 60) -> None:
        """Until the committed offsets pass every event ``outcomes`` published."""
        ends = dict(outcomes.sender.ends)

        async def done() -> bool:
            if self.task.done():
                self.task.result()
                raise AssertionError("the forwarder stopped by itself")
            return await forward_drained(self.settings, ends)

        await wait_for(done, timeout_s=timeout_s, what="the forwarder to commit past every event")

    def metric(self, name: str, **labels: str) -> float:
        return self.worker.registry.get_sample_value(name, labels) or 0.0


@asynccontextmanager
async def forwarder(settings: Settings) -> AsyncIterator[Running]:
    """A forwarder worker in this process, stopped when the block ends."""
    worker = forward_runner(settings, registry=new_registry(), install_signal_handlers=False)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield Running(worker, task, settings)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


def assert_received(
    receiver: Receiver, published: list[Published], *, missing: set[str] | None = None
) -> None:
    """Every published event reached the receiver in an accepted, verified request (but
    ``missing``); duplicates only under the same webhook-id; each SKU's events in order."""
    accepted = receiver.accepted()
    assert all(r.verified for r in accepted), "accepted a request whose signature did not verify"
    ids_by_event: dict[str, set[str]] = defaultdict(set)
    first_arrival: dict[str, int] = {}
    for n, (webhook_id, event) in enumerate(receiver.accepted_events()):
        event_id = event["data"]["event_id"]
        ids_by_event[event_id].add(webhook_id)
        first_arrival.setdefault(event_id, n)
    expected = {p.event_id for p in published} - (missing or set())
    lost = expected - set(ids_by_event)
    assert not lost, f"{len(lost)} of {len(expected)} events never delivered"
    unexpected = set(ids_by_event) - {p.event_id for p in published}
    assert not unexpected, f"delivered events nobody published: {unexpected}"
    assert not (missing or set()) & set(ids_by_event), "a refused event was accepted"
    split = {e: ids for e, ids in ids_by_event.items() if len(ids) > 1}
    assert not split, f"events delivered under different webhook-ids: {split}"
    by_sku: dict[str, list[Published]] = defaultdict(list)
    for p in published:
        if p.event_id in first_arrival:
            by_sku[p.sku].append(p)
    for sku, events in by_sku.items():
        arrived = sorted(events, key=lambda p: first_arrival[p.event_id])
        versions = [p.version for p in arrived]
        assert versions == sorted(versions), f"{sku}: delivered out of order {versions}"
