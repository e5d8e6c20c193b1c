"""Load generation and the throughput benchmark.

``generate_catalog`` makes a synthetic catalog (SKUs with N-image galleries over a
shared pool of objects); ``run_benchmark`` publishes it, drains it with one
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
from datetime import UTC, datetime
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry

from streamer.codec import Codec
from streamer.config import Settings
from streamer.db import migrate
from streamer.etags import make_s3_client, s3_key
from streamer.events import MediaGalleryChanged
from streamer.metrics import Metrics
from streamer.publisher import Publisher
from streamer.topics import create_topics
from streamer.worker import Worker

__all__ = ["PhaseResult", "generate_catalog", "run_benchmark", "upload_objects"]


def object_paths(n_objects: int) -> list[str]:
    return [f"/bench/{i // 500:03d}/img-{i:06d}.jpg" for i in range(n_objects)]


def generate_catalog(
    n_skus: int,
    images_per_sku: int,
    paths: list[str],
    *,
    version: int,
    request_id: str | None = None,
    prefix: str = "BENCH",
) -> list[MediaGalleryChanged]:
    now = datetime.now(UTC)
    events = []
    for i in range(n_skus):
        sku = f"{prefix}-{i:07d}"
        chosen = [paths[(i * images_per_sku + k) % len(paths)] for k in range(images_per_sku)]
        events.append(
            MediaGalleryChanged.model_validate(
                {
                    "event_id": str(uuid.uuid4()),
                    "sku": sku,
                    "version": version,
                    "occurred_at": now,
                    "source": "bench",
                    "request_id": request_id,
                    "mode": "REPLACE",
                    "images": [
                        {
                            "file_path": p,
                            "label": f"{sku} {k}",
                            "position": k,
                            "roles": ["base"] if k == 0 else [],
                        }
                        for k, p in enumerate(chosen)
                    ],
                }
            )
        )
    return events


def upload_objects(
    settings: Settings, paths: list[str], progress: Callable[[int], None] | None = None
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    s3 = make_s3_client(settings, max_pool_connections=16)

    def put(path: str) -> None:
        s3.put_object(
            Bucket=settings.s3_bucket, Key=s3_key(settings.s3_prefix, path), Body=path.encode() * 16
        )

    with ThreadPoolExecutor(16) as pool:
        for _ in pool.map(put, paths):
            if progress is not None:
                progress(1)


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
    conn = await asyncpg.connect(settings.database_dsn)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = await conn.fetch(
                "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = $1",
                settings.group_id,
            )
            stored = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
            if all(end == 0 or stored.get(tp, -1) >= end for tp, end in ends.items()):
                return
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    raise TimeoutError(f"not drained within {timeout_s:.0f}s")


def measure_codec(
    settings: Settings, events: list[MediaGalleryChanged], log: Callable[[str], None]
) -> tuple[float, float]:
    """Encode and decode+validate rates of the codec alone, one core, no broker."""
    codec = Codec.from_settings(settings)
    t0 = time.perf_counter()
    encoded = [codec.encode(event, topic=settings.media_topic) for event in events]
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
    with Publisher(settings) as publisher:
        for event in events:
            publisher.publish(event)
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
    s = settings.model_copy(
        update={
            "product_topic": f"bench-{run}.catalog.product.v1",
            "media_topic": f"bench-{run}.catalog.media.v1",
            "outcome_topic": f"bench-{run}.catalog.gallery.updated.v1",
            "dlq_topic": f"bench-{run}.catalog.gallery.dlq",
            "group_id": f"streamer-bench-{run}",
            "metrics_port": 0,
        }
    )
    create_topics(s)
    await migrate(s.database_dsn)
    paths = object_paths(n_objects)
    t0 = time.monotonic()
    upload_objects(s, paths)
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
        metrics = Metrics(CollectorRegistry(auto_describe=True))
        worker = Worker(s, metrics=metrics, install_signal_handlers=False)
        stop = asyncio.Event()
        wall0 = time.monotonic()
        task = asyncio.create_task(worker.run(stop))
        # The clock starts once partitions are assigned, so the group join is not counted.
        while not metrics.registry.get_sample_value("streamer_assigned_partitions"):
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
        get = metrics.registry.get_sample_value
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
