"""The throughput benchmark.

``run_benchmark`` publishes a synthetic catalog (``loadgen``), drains it with one
in-process worker, re-publishes the same galleries with newer versions (the
no-op re-sync that dominates real catalogs) and prints what each phase cost:
events/s, images/s, ETag checks and consumer CPU per check, rows written.
"""

from __future__ import annotations

import asyncio
import resource
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamer.contract.codec import Codec
from streamer.contract.events import MediaGalleryChanged
from streamer.contract.publishing import EventPublisher
from streamer.dev.loadgen import generate_catalog, object_paths, upload_objects
from streamer.gallery.worker import GalleryWorker
from streamer.ops.schema import migrate_all
from streamer.ops.topics import create_topics
from streamer.runtime.database import connect
from streamer.runtime.metrics import new_registry
from streamer.runtime.publisher import Publisher
from streamer.settings import Settings

__all__ = ["PhaseResult", "run_benchmark", "summary_rows"]


@dataclass
class PhaseResult:
    name: str
    events: int
    images: int
    seconds: float
    cpu_s: float
    etag_checks: float
    rows_written: float
    publish_seconds: float = 0.0

    @property
    def published_per_s(self) -> float:
        return self.events / self.publish_seconds if self.publish_seconds else 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_check(self) -> float:
        return 1000 * self.cpu_s / self.etag_checks if self.etag_checks else 0.0


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _drained(settings: Settings, ends: dict[tuple[str, int], int], timeout_s: float) -> None:
    async with connect(settings.database.dsn) as conn:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = await conn.fetch(
                "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = $1",
                settings.gallery.group_id,
            )
            stored = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
            if all(end == 0 or stored.get(tp, -1) >= end for tp, end in ends.items()):
                return
            await asyncio.sleep(0.05)
    raise TimeoutError(f"not drained within {timeout_s:.0f}s")


def measure_codec(
    settings: Settings, events: list[MediaGalleryChanged], log: Callable[[str], None]
) -> tuple[float, float]:
    """Encode and decode+validate rates of the codec alone, one core, no broker."""
    codec = Codec.for_registry(settings.kafka.schema_registry_url)
    t0 = time.perf_counter()
    encoded = [codec.encode(event, topic=settings.topics.media_topic) for event in events]
    encode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for value in encoded:
        codec.decode_event(value)
    decode_s = time.perf_counter() - t0
    n = len(events)
    log(
        f"codec: encode {n / encode_s:,.0f} events/s ({1e6 * encode_s / n:.1f} µs each), "
        f"decode+validate {n / decode_s:,.0f} events/s ({1e6 * decode_s / n:.1f} µs each), "
        f"{sum(map(len, encoded)) / n:.0f} bytes per event"
    )
    return n / encode_s, n / decode_s


def _publish(settings: Settings, events: list[MediaGalleryChanged]) -> dict[tuple[str, int], int]:
    codec = Codec.for_registry(settings.kafka.schema_registry_url)
    with Publisher(settings.kafka) as publisher:
        events_out = EventPublisher(publisher, codec, settings.topics)
        for event in events:
            events_out.publish(event)
        publisher.flush()
        return dict(publisher.end_offsets)


async def run_benchmark(
    settings: Settings,
    *,
    n_skus: int,
    images_per_sku: int,
    n_objects: int,
    log: Callable[[str], None] = print,
    timeout_s: float = 900,
) -> list[PhaseResult]:
    """Publish first, then start the worker, so each phase measures draining a full backlog."""
    run = uuid.uuid4().hex[:6]
    s = settings.replace(
        product_topic=f"bench-{run}.catalog.product.v1",
        media_topic=f"bench-{run}.catalog.media.v1",
        outcome_topic=f"bench-{run}.catalog.gallery.updated.v1",
        dlq_topic=f"bench-{run}.catalog.gallery.dlq",
        group_id=f"streamer-bench-{run}",
        metrics_port=0,
    )
    create_topics(s)
    await migrate_all(s.database.dsn)
    paths = object_paths(n_objects)
    t0 = time.monotonic()
    upload_objects(s.s3, paths)
    log(f"uploaded {n_objects} objects in {time.monotonic() - t0:.1f}s")

    results = []
    version = int(time.time() * 1000)
    for name in ("first sync", "no-op re-sync"):
        version += 1
        events = generate_catalog(n_skus, images_per_sku, paths, version=version, prefix=f"B{run}")
        if name == "first sync":
            measure_codec(s, events, log)
        t0 = time.monotonic()
        ends = _publish(s, events)
        publish_s = time.monotonic() - t0
        log(
            f"{name}: published {len(events)} events in {publish_s:.2f}s "
            f"({len(events) / publish_s:,.0f} events/s, acknowledged by the broker)"
        )
        registry = new_registry()
        worker = GalleryWorker(s, registry=registry, install_signal_handlers=False)
        stop = asyncio.Event()
        wall0 = time.monotonic()
        task = asyncio.create_task(worker.run(stop))
        # The clock starts once partitions are assigned, so the group join is not counted.
        while not registry.get_sample_value("streamer_assigned_partitions"):
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        first_commit = time.monotonic()
        cpu_start = _cpu_s()
        await _drained(s, ends, timeout_s)
        wall = time.monotonic() - wall0
        cpu = _cpu_s() - cpu_start
        stop.set()
        await task
        get = registry.get_sample_value
        checks = sum(
            get("streamer_etag_checks_total", {"result": r}) or 0 for r in ("found", "missing")
        )
        rows = sum(
            get("streamer_db_rows_written_total", {"operation": op}) or 0
            for op in ("insert", "update", "delete")
        )
        join_s = first_commit - wall0
        split = {
            label: get(f"streamer_{metric}_sum") or 0.0
            for label, metric in (
                ("batches", "batch_duration_seconds"),
                ("ETag look-ups", "etag_lookup_duration_seconds"),
                ("state reads", "db_read_duration_seconds"),
                ("writes", "db_write_duration_seconds"),
            )
        }
        log(f"{name}: wall time inside " + ", ".join(f"{k} {v:.2f}s" for k, v in split.items()))
        result = PhaseResult(
            name,
            len(events),
            len(events) * images_per_sku,
            wall - join_s,
            cpu,
            checks,
            rows,
            publish_s,
        )
        results.append(result)
        log(
            f"{name}: {result.events} events, {result.images} images in {result.seconds:.2f}s "
            f"(+{join_s:.1f}s group join) -> {result.events_per_s:,.0f} events/s, "
            f"{result.images_per_s:,.0f} images/s; {checks:,.0f} ETag checks, "
            f"{result.cpu_ms_per_check:.3f} ms consumer CPU per check; {rows:,.0f} rows written"
        )
    return results


def summary_rows(results: list[PhaseResult]) -> list[dict[str, Any]]:
    return [
        {
            "phase": r.name,
            "events": r.events,
            "images": r.images,
            "seconds": round(r.seconds, 3),
            "events_per_s": round(r.events_per_s),
            "images_per_s": round(r.images_per_s),
            "etag_checks": int(r.etag_checks),
            "cpu_ms_per_check": round(r.cpu_ms_per_check, 3),
            "rows_written": int(r.rows_written),
            "published_per_s": round(r.published_per_s),
        }
        for r in results
    ]
