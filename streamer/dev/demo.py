"""``streamer demo``: the product's story in under a minute, on the embedded stack.

Every step checks what it shows; the demo exits non-zero when any check fails,
so it doubles as an end-to-end smoke test of a fresh installation.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from streamer.contract.codec import Codec
from streamer.contract.events import MediaGalleryChanged, ProductChanged
from streamer.contract.publishing import EventPublisher
from streamer.dev.demo_api import api_step
from streamer.dev.demo_forward import show_forwarding
from streamer.dev.demo_objects import show_objects
from streamer.dev.demo_replicate import show_replication
from streamer.dev.stack import DevStack, shown_url
from streamer.gallery.worker import gallery_runner
from streamer.ops.schema import migrate_all
from streamer.ops.topics import create_topics
from streamer.runtime.database import connect
from streamer.runtime.metrics import new_registry
from streamer.runtime.publisher import Publisher
from streamer.runtime.replay import DeadLetterFilter, read_dead_letters, replay_dead_letters
from streamer.settings import Settings, load_settings
from streamer.storage.clients import make_s3_client
from streamer.storage.keys import s3_key

__all__ = ["Demo", "run_demo"]

SKUS = 12
IMAGES_PER_SKU = 3


@dataclass
class Checks:
    failures: list[str] = field(default_factory=list)
    console: Console = field(default_factory=Console)

    def check(self, ok: bool, text: str) -> bool:
        mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
        self.console.print(f"  {mark} {text}")
        if not ok:
            self.failures.append(text)
        return ok


def _body(sku: str, n: int, revision: int = 1) -> bytes:
    """A small, distinct 'image' per path and revision (the bytes only matter for their ETag)."""
    return f"\x89PNG demo {sku} image {n} revision {revision}\n".encode() * 8


class Demo:
    def __init__(self, settings: Settings, console: Console | None = None) -> None:
        run = uuid.uuid4().hex[:6]
        # Own topics, group and prefix per run: the demo can be run again on the same stack.
        self.settings = settings.replace(
            product_topic=f"demo-{run}.catalog.product.v1",
            media_topic=f"demo-{run}.catalog.media.v1",
            outcome_topic=f"demo-{run}.catalog.gallery.updated.v1",
            import_completed_topic=f"demo-{run}.catalog.import.completed.v1",
            dlq_topic=f"demo-{run}.catalog.gallery.dlq",
            group_id=f"streamer-demo-{run}",
            s3_prefix=f"demo-{run}/media/catalog/product",
            topic_partitions=4,
            metrics_port=0,
            batch_max_wait_ms=100,
        )
        self.run_id = run
        self.console = console or Console()
        self.checks = Checks(console=self.console)
        self.registry = new_registry()
        self.s3 = make_s3_client(self.settings.s3)
        self.publisher = Publisher(self.settings.kafka)
        self.events = EventPublisher(
            self.publisher,
            Codec.for_registry(self.settings.kafka.schema_registry_url),
            self.settings.topics,
        )
        self.version = int(time.time() * 1000)
        self._worker_task: asyncio.Task[Any] | None = None
        self._stop = asyncio.Event()

    # -- helpers ----------------------------------------------------------------

    def next_version(self) -> int:
        self.version += 1
        return self.version

    def media_event(self, sku: str, images: list[dict[str, Any]], **kw: Any) -> MediaGalleryChanged:
        return MediaGalleryChanged.model_validate(
            {
                "event_id": str(uuid.uuid4()),
                "sku": sku,
                "version": kw.pop("version", None) or self.next_version(),
                "occurred_at": datetime.now(UTC),
                "source": "demo",
                "images": images,
                **kw,
            }
        )

    def product_event(self, sku: str, name: str) -> ProductChanged:
        return ProductChanged.model_validate(
            {
                "event_id": str(uuid.uuid4()),
                "sku": sku,
                "version": self.next_version(),
                "occurred_at": datetime.now(UTC),
                "source": "demo",
                "name": name,
                "request_id": f"demo-{self.run_id}",
            }
        )

    def images_of(self, sku: str, label_suffix: str = "") -> list[dict[str, Any]]:
        roles = [["base", "small_image"], ["thumbnail"], ["swatch_image"]]
        return [
            {
                "file_path": f"/{sku[-2:]}/{sku.lower()}-{n}.png",
                "label": f"{sku} view {n}{label_suffix}",
                "position": n,
                "roles": roles[n - 1],
            }
            for n in range(1, IMAGES_PER_SKU + 1)
        ]

    def upload(self, sku: str, n: int, revision: int = 1) -> str:
        body = _body(sku, n, revision)
        self.s3.put_object(
            Bucket=self.settings.s3.s3_bucket,
            Key=s3_key(self.settings.s3.s3_prefix, f"/{sku[-2:]}/{sku.lower()}-{n}.png"),
            Body=body,
            ContentType="image/png",
        )
        return hashlib.md5(body).hexdigest()  # noqa: S324 - S3's ETag of a single-part upload

    def publish(self, events: list[ProductChanged | MediaGalleryChanged]) -> None:
        for event in events:
            self.events.publish(event)
        self.publisher.flush()

    async def _sql(self, query: str, *args: Any) -> list[Any]:
        async with connect(self.settings.database.dsn) as conn:
            return list(await conn.fetch(query, *args))

    async def drain(self, timeout_s: float = 60) -> None:
        """Wait until the worker's committed offsets reach every offset the publisher got acked."""
        ends = dict(self.publisher.end_offsets)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._worker_task is not None and self._worker_task.done():
                self._worker_task.result()
                raise RuntimeError("the worker stopped unexpectedly")
            rows = await self._sql(
                "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = $1",
                self.settings.gallery.group_id,
            )
            stored = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
            if all(stored.get(tp, -1) >= end for tp, end in ends.items()):
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"the topics were not drained within {timeout_s:.0f}s")

    def counter(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    async def rows_of(self, sku: str) -> dict[str, Any]:
        rows = await self._sql(
            "SELECT file_path, etag, label, roles, content_version, row_version FROM gallery_images "
            "WHERE sku = $1",
            sku,
        )
        return {r["file_path"]: dict(r) for r in rows}

    def step(self, n: int, title: str) -> None:
        self.console.rule(f"[bold]{n}. {title}")

    # -- the story ------------------------------------------------------------------

    async def run(self) -> bool:
        c, s = self.checks, self.settings
        started = time.monotonic()
        self.step(1, "Set up: topics, schema, sample catalog in S3")
        created = create_topics(s)
        c.check(True, f"topics ready: {', '.join(sorted(created))}")
        applied = await migrate_all(s.database.dsn)
        c.check(True, f"database migrated ({', '.join(applied) or 'already current'})")
        skus = [f"DEMO-{self.run_id}-{i:02d}" for i in range(1, SKUS + 1)]
        etags = {
            (sku, n): self.upload(sku, n) for sku in skus for n in range(1, IMAGES_PER_SKU + 1)
        }
        c.check(
            len(etags) == SKUS * IMAGES_PER_SKU, f"uploaded {len(etags)} images for {SKUS} SKUs"
        )

        self.publisher.start()
        worker = gallery_runner(s, registry=self.registry, install_signal_handlers=False)
        self._worker_task = asyncio.create_task(worker.run(self._stop))
        try:
            await self._story(skus, etags)
        finally:
            self._stop.set()
            await asyncio.wait_for(self._worker_task, timeout=60)
            self.publisher.close()
        self.console.rule("[bold]Summary")
        elapsed = time.monotonic() - started
        if c.failures:
            self.console.print(f"[red]{len(c.failures)} check(s) failed[/red] in {elapsed:.1f}s:")
            for failure in c.failures:
                self.console.print(f"  - {failure}")
            return False
        self.console.print(f"[green]every step behaved as shown[/green] ({elapsed:.1f}s)")
        return True

    async def _story(self, skus: list[str], etags: dict[tuple[str, int], str]) -> None:
        c, s = self.checks, self.settings

        self.step(2, "Publish product and media events; the consumer group writes the galleries")
        events: list[ProductChanged | MediaGalleryChanged] = []
        for sku in skus:
            events.append(self.product_event(sku, f"Demo product {sku}"))
            events.append(
                self.media_event(sku, self.images_of(sku), request_id=f"demo-{self.run_id}")
            )
        t0 = time.monotonic()
        self.publish(events)
        await self.drain()
        took = time.monotonic() - t0
        count = await self._sql(
            "SELECT count(*) AS n, count(DISTINCT sku) AS skus FROM gallery_images WHERE sku = ANY($1)",
            skus,
        )
        c.check(
            count[0]["n"] == SKUS * IMAGES_PER_SKU and count[0]["skus"] == SKUS,
            f"{count[0]['n']} gallery rows for {count[0]['skus']} SKUs written in {took:.1f}s",
        )
        sample = await self.rows_of(skus[0])
        table = Table("file_path", "etag", "label", "roles", title=f"gallery of {skus[0]}")
        for path, row in sorted(sample.items()):
            table.add_row(path, row["etag"][:12] + "…", row["label"], ",".join(row["roles"]))
        self.console.print(table)
        c.check(
            all(
                sample[f"/{skus[0][-2:]}/{skus[0].lower()}-{n}.png"]["etag"] == etags[(skus[0], n)]
                for n in (1, 2, 3)
            ),
            "stored ETags are the ETags S3 returned for the uploaded objects",
        )

        self.step(3, "Re-publish the identical catalog under new event ids: zero writes")
        before = await self._sql(
            "SELECT sum(row_version) AS v FROM gallery_images WHERE sku = ANY($1)", skus
        )
        # Same versions, new ids: the first event to reach a version keeps it, so these are
        # stale (README, "Versions and event ids"); an unchanged re-sync at a new version
        # would be a no-op. Either way nothing is written.
        unchanged = ("noop", "stale")
        unchanged_before = sum(
            self.counter("streamer_events_processed_total", outcome=o) for o in unchanged
        )
        rows_before = sum(
            self.counter("streamer_db_rows_written_total", operation=op)
            for op in ("insert", "update", "delete")
        )
        same = []
        for event in events:
            same.append(event.model_copy(update={"event_id": str(uuid.uuid4())}))
        self.publish(same)
        await self.drain()
        after = await self._sql(
            "SELECT sum(row_version) AS v FROM gallery_images WHERE sku = ANY($1)", skus
        )
        changed_nothing = (
            sum(self.counter("streamer_events_processed_total", outcome=o) for o in unchanged)
            - unchanged_before
        )
        rows_after = sum(
            self.counter("streamer_db_rows_written_total", operation=op)
            for op in ("insert", "update", "delete")
        )
        c.check(
            changed_nothing == len(same),
            f"{changed_nothing:.0f} of {len(same)} re-published events changed nothing"
            " (stale: their versions belong to the events that reached them first)",
        )
        c.check(
            rows_after == rows_before and before[0]["v"] == after[0]["v"],
            f"gallery rows written: {rows_after - rows_before:.0f} (row versions unchanged)",
        )

        self.step(4, "Replace one image's bytes in S3: detected as a content change by its ETag")
        target = skus[1]
        path = f"/{target[-2:]}/{target.lower()}-1.png"
        new_etag = self.upload(target, 1, revision=2)
        self.publish([self.media_event(target, self.images_of(target))])
        await self.drain()
        row = (await self.rows_of(target))[path]
        c.check(
            row["etag"] == new_etag and row["content_version"] == 2,
            f"{path}: ETag {etags[(target, 1)][:8]}… → {new_etag[:8]}…, content_version 2",
        )
        content = self.counter("streamer_images_total", result="content_changed")
        c.check(content >= 1, f"images with content changes so far: {content:.0f}")

        self.step(5, "Change only a label: a metadata update, the content version stays")
        target = skus[2]
        self.publish(
            [self.media_event(target, self.images_of(target, label_suffix=" (new label)"))]
        )
        await self.drain()
        rows = await self.rows_of(target)
        meta = self.counter("streamer_images_total", result="metadata_changed")
        c.check(
            all(
                r["label"].endswith("(new label)") and r["content_version"] == 1
                for r in rows.values()
            ),
            f"3 labels updated, content_version 1 kept (metadata changes so far: {meta:.0f})",
        )

        self.step(6, "Bad input: undecodable bytes, a path with '..', an image missing from S3")
        bad_sku = skus[3]
        self.publisher.produce(
            s.topics.media_topic, b"\xde\xad\xbe\xef not an Avro event", key=bad_sku.encode()
        )
        self.publish(
            [
                self.media_event(bad_sku, [{"file_path": "../../etc/passwd", "roles": ["base"]}]),
                self.media_event(
                    skus[4],
                    [*self.images_of(skus[4]), {"file_path": "/late/arrival.png", "position": 4}],
                ),
            ]
        )
        await self.drain()
        letters = await asyncio.get_running_loop().run_in_executor(
            None, lambda: list(read_dead_letters(s.kafka, s.runtime.dlq_topic))
        )
        reasons = sorted(letter.reason for letter in letters)
        table = Table("reason", "original topic", "offset", "message", title="dead-letter topic")
        for letter in letters:
            table.add_row(letter.reason, letter.topic, str(letter.offset), letter.message[:70])
        self.console.print(table)
        c.check(
            len(letters) == 3 and "object_missing" in reasons and "invalid_file_path" in reasons,
            f"3 dead letters with their reasons: {', '.join(reasons)}",
        )
        partial = await self.rows_of(skus[4])
        c.check(
            len(partial) == 3 and "/late/arrival.png" not in partial,
            f"{skus[4]}: its 3 valid images kept, the missing one waits in the dead-letter topic",
        )

        self.step(7, "Upload the missing image and replay its dead letter")
        self.s3.put_object(
            Bucket=s.s3.s3_bucket,
            Key=s3_key(s.s3.s3_prefix, "/late/arrival.png"),
            Body=b"late",
            ContentType="image/png",
        )
        missing = DeadLetterFilter(reason="object_missing")
        replayed = await replay_dead_letters(s.kafka, s.database, s.runtime.dlq_topic, missing)
        c.check(
            replayed.replayed == 1,
            f"replayed {replayed.replayed} dead letter to {s.topics.media_topic}",
        )
        for tp, end in replayed.end_offsets.items():
            self.publisher.end_offsets[tp] = max(self.publisher.end_offsets.get(tp, 0), end)
        await self.drain()
        completed = await self.rows_of(skus[4])
        c.check(
            "/late/arrival.png" in completed and len(completed) == 4,
            f"{skus[4]} now has {len(completed)} images, including /late/arrival.png",
        )
        again = await replay_dead_letters(s.kafka, s.database, s.runtime.dlq_topic, missing)
        c.check(again.replayed == 0, "a second replay sends nothing (replays are recorded)")

        self.step(8, "Key metrics (as Prometheus scrapes them)")
        table = Table("metric", "labels", "value")
        for name, labels in [
            ("streamer_events_processed_total", {"outcome": "written"}),
            ("streamer_events_processed_total", {"outcome": "noop"}),
            ("streamer_events_processed_total", {"outcome": "partial"}),
            ("streamer_events_processed_total", {"outcome": "dead_lettered"}),
            ("streamer_images_total", {"result": "added"}),
            ("streamer_images_total", {"result": "unchanged"}),
            ("streamer_images_total", {"result": "content_changed"}),
            ("streamer_images_total", {"result": "metadata_changed"}),
            ("streamer_etag_checks_total", {"result": "found"}),
            ("streamer_s3_head_duration_seconds_count", {}),
            ("streamer_batch_duration_seconds_count", {}),
        ]:
            value = self.counter(name, **labels)
            table.add_row(name, ",".join(f"{k}={v}" for k, v in labels.items()), f"{value:.0f}")
        dead_letters = 0.0
        for family in self.registry.collect():
            for point in family.samples:
                if point.name == "streamer_dead_letters_total":
                    dead_letters += point.value
                    table.add_row(
                        point.name, f"reason={point.labels['reason']}", f"{point.value:.0f}"
                    )
        self.console.print(table)
        c.check(
            dead_letters == len(letters),
            f"dead letters counted: {dead_letters:.0f}, in the topic: {len(letters)}",
        )
        c.check(
            self.counter("streamer_events_processed_total", outcome="written") > 0,
            "metrics recorded the run",
        )
        await show_replication(self, 9, skus)
        await show_forwarding(self, 10)
        await api_step(self, 11, skus)
        await show_objects(self, 12, skus)


def run_demo(home: Path, database_url: str | None, console: Console | None = None) -> bool:
    console = console or Console()
    dev = DevStack(home, database_url=database_url)
    console.rule("[bold]streamer demo")
    state = dev.up()
    for component in state.components.values():
        console.print(f"  {component.name:<9} {shown_url(component.url)}")
    settings = load_settings(env_file=dev.env_file)
    ok = asyncio.run(Demo(settings, console).run())
    # The demo's own topics are prefixed, so that it can run again; the default ones (and the
    # schema) are what `streamer publish`, `consume` and `serve` use next (README: The first hour).
    created = create_topics(settings)
    asyncio.run(migrate_all(settings.database.dsn))
    console.print(
        f"default topics ready ({len(created)}), schema migrated. Next: README, "
        "'The first hour' (your own events, images, bulk and a replayed dead letter)."
    )
    return ok
