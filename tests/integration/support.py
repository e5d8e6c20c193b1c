"""Helpers for integration tests: topics, schema, sample objects, publishing, running workers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from pydantic import SecretStr

from streamer.contract.codec import Codec
from streamer.contract.events import MediaGalleryChanged, ProductChanged
from streamer.gallery.export import export_galleries
from streamer.gallery.worker import gallery_runner
from streamer.ops.schema import migrate_all
from streamer.settings import Settings
from streamer.storage.keys import s3_key

Event = ProductChanged | MediaGalleryChanged


def create_topics(
    settings: Settings,
    *,
    input_max_message_bytes: int | None = None,
    dlq_config: dict[str, str] | None = None,
) -> None:
    """The test's topics. ``input_max_message_bytes`` raises the source topics' limit (1 MB on
    Apache Kafka) for tests of oversized input; the dead-letter topic keeps the default, as
    the dead letters of such input must fit it, or takes ``dlq_config``."""
    admin = AdminClient(settings.kafka.client_config())
    inputs = [settings.topics.product_topic, settings.topics.media_topic]
    topics = [
        *inputs,
        settings.topics.outcome_topic,
        settings.topics.import_completed_topic,
        settings.runtime.dlq_topic,
    ]
    big = {"max.message.bytes": str(input_max_message_bytes)} if input_max_message_bytes else {}
    futures = admin.create_topics(
        [
            NewTopic(
                t,
                num_partitions=settings.kafka.topic_partitions,
                replication_factor=1,
                config=big
                if t in inputs
                else (dlq_config or {})
                if t == settings.runtime.dlq_topic
                else {},
            )
            for t in topics
        ]
    )
    for future in futures.values():
        future.result(timeout=30)


def prepare(
    settings: Settings,
    *,
    input_max_message_bytes: int | None = None,
    dlq_config: dict[str, str] | None = None,
) -> None:
    """Topics and schema for one test's settings."""
    create_topics(settings, input_max_message_bytes=input_max_message_bytes, dlq_config=dlq_config)
    from tests.conftest import run_sync

    run_sync(migrate_all(settings.database.dsn))


def put_image(s3: Any, settings: Settings, file_path: str, body: bytes) -> str:
    s3.put_object(
        Bucket=settings.s3.s3_bucket, Key=s3_key(settings.s3.s3_prefix, file_path), Body=body
    )
    return hashlib.md5(body).hexdigest()


def media(
    sku: str,
    version: int,
    images: list[dict[str, Any]],
    *,
    mode: str = "UPSERT",
    request_id: str | None = None,
    event_id: str | None = None,
) -> MediaGalleryChanged:
    return MediaGalleryChanged.model_validate(
        {
            "event_id": event_id or str(uuid.uuid4()),
            "sku": sku,
            "version": version,
            "occurred_at": datetime.now(UTC),
            "source": "test",
            "request_id": request_id,
            "mode": mode,
            "images": images,
        }
    )


def product(
    sku: str, version: int, *, op: str = "UPSERT", name: str | None = None
) -> ProductChanged:
    return ProductChanged.model_validate(
        {
            "event_id": str(uuid.uuid4()),
            "sku": sku,
            "version": version,
            "occurred_at": datetime.now(UTC),
            "source": "test",
            "op": op,
            "name": name,
        }
    )


class Sender:
    """Publishes encoded events (or raw bytes) and remembers the end offset of every partition."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.codec = Codec.for_registry(settings.kafka.schema_registry_url)
        self.producer = Producer(
            settings.kafka.client_config(
                **{
                    "enable.idempotence": True,
                    "acks": "all",
                    "partitioner": "murmur2_random",
                    "linger.ms": 5,
                    "message.max.bytes": 16 * 1024 * 1024,
                }
            )
        )
        self.ends: dict[tuple[str, int], int] = {}
        self.errors: list[str] = []

    def _report(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))
            return
        tp = (msg.topic(), msg.partition())
        self.ends[tp] = max(self.ends.get(tp, 0), msg.offset() + 1)

    def topic_of(self, event: Event) -> str:
        return (
            self.settings.topics.product_topic
            if isinstance(event, ProductChanged)
            else self.settings.topics.media_topic
        )

    def send(self, events: Iterable[Event]) -> None:
        for event in events:
            topic = self.topic_of(event)
            self.raw(topic, event.sku.encode(), self.codec.encode(event, topic=topic))
        self.flush()

    def raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Any = None,
        timestamp_ms: int = 0,
    ) -> None:
        while True:
            try:
                self.producer.produce(
                    topic,
                    value,
                    key,
                    headers=headers,
                    timestamp=timestamp_ms,
                    on_delivery=self._report,
                )
                break
            except BufferError:
                self.producer.poll(0.1)
        self.producer.poll(0)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0
        assert not self.errors, self.errors


def counted(worker: Any, metric: str, label: str) -> Counter[str]:
    """A worker's counter by one label, as its /metrics would show it (no test-only state)."""
    out: Counter[str] = Counter()
    for family in worker.registry.collect():
        for sample in family.samples:
            if sample.name == metric and label in sample.labels:
                out[sample.labels[label]] += int(sample.value)
    return out


def processed(worker: Any) -> Counter[str]:
    """What the gallery worker did with the events it processed, by outcome."""
    return counted(worker, "streamer_events_processed_total", "outcome")


def rows_written(worker: Any) -> int:
    return sum(counted(worker, "streamer_db_rows_written_total", "operation").values())


async def stored_offsets(settings: Settings) -> dict[tuple[str, int], int]:
    conn = await asyncpg.connect(settings.database.dsn)
    try:
        rows = await conn.fetch(
            "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = $1",
            settings.gallery.group_id,
        )
    finally:
        await conn.close()
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


async def wait_for(
    condition: Callable[[], Awaitable[bool]], *, timeout_s: float, what: str
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


async def drained(settings: Settings, ends: dict[tuple[str, int], int]) -> bool:
    stored = await stored_offsets(settings)
    return all(stored.get(tp, -1) >= end for tp, end in ends.items())


@asynccontextmanager
async def drained_worker(
    settings: Settings, ends: dict[tuple[str, int], int], *, timeout_s: float = 90, **worker_kw: Any
) -> AsyncIterator[Any]:
    """An in-process worker, yielded once every partition's stored offset reaches its end
    and stopped when the block ends."""
    worker = gallery_runner(settings, install_signal_handlers=False, **worker_kw)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:

        async def done() -> bool:
            if task.done():
                task.result()
            return await drained(settings, ends)

        await wait_for(done, timeout_s=timeout_s, what="the worker to drain the topics")
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


async def run_until_drained(
    settings: Settings, ends: dict[tuple[str, int], int], *, timeout_s: float = 90, **worker_kw: Any
) -> Any:
    """Run an in-process worker until every partition's stored offset reaches its end."""
    async with drained_worker(settings, ends, timeout_s=timeout_s, **worker_kw) as worker:
        return worker


async def export_all(settings: Settings) -> list[dict[str, Any]]:
    return [g async for g in export_galleries(settings.database.dsn)]


async def fetch(settings: Settings, query: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(settings.database.dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def read_topic(
    settings: Settings, topic: str, *, idle_s: float = 1.0, timeout_s: float = 20.0
) -> list[Any]:
    """Every message of a topic, read until it stays quiet (watermarks are not trusted on Tansu)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        settings.kafka.client_config(
            **{
                "group.id": f"reader-{uuid.uuid4().hex[:6]}",
                "fetch.wait.max.ms": 10,
                "enable.auto.commit": False,
            }
        )
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        quiet = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet < idle_s:
            batch = [m for m in consumer.consume(500, 0.1) if m.error() is None]
            if batch:
                out.extend(batch)
                quiet = time.monotonic()
        return out
    finally:
        consumer.close()


def settings_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    every = {name: value for kind in Settings.kinds() for name, value in settings.section(kind)}
    for name, value in every.items():
        if value is None or isinstance(value, dict):
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[f"STREAMER_{name.upper()}"] = str(value)
    env["STREAMER_HOME"] = "/nonexistent-streamer-home"  # no dev.env: the test's settings only
    return env


def dead_letters(settings: Settings) -> list[Any]:
    """Every dead letter of this test's dead-letter topic."""
    from streamer.runtime.replay import read_dead_letters

    return list(read_dead_letters(settings.kafka, settings.runtime.dlq_topic))


async def replay(settings: Settings, *, dry_run: bool = False, **filters: Any) -> Any:
    from streamer.runtime.replay import DeadLetterFilter, replay_dead_letters

    return await replay_dead_letters(
        settings.kafka,
        settings.database,
        settings.runtime.dlq_topic,
        DeadLetterFilter(**filters),
        dry_run=dry_run,
    )


@contextmanager
def process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A streamer command as a real process, its output in ``log``, stopped with SIGTERM."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamer", *argv],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
