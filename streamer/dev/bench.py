"""The throughput benchmark: every phase beside the ceilings of the parts it runs on.

``run_benchmark`` uploads a pool of objects, publishes a synthetic catalog of N-image
galleries (``loadgen``) and measures, in one run on the configured stack:

- the ceilings: the broker's raw consume+decode rate, the S3 server's raw HEAD/s and
  listed keys/s through streamer's own client at its own concurrency, and
  PostgreSQL's raw upsert rows/s with the gallery's own statement;
- the phases, in ``PHASES`` order: ``first_sync`` (one worker drains the catalog),
  ``noop_resync`` (the same galleries again, newer versions: nothing to write),
  ``noop_resync_pruning`` (the same, right after, while the retention pruner works through
  a backlog of bookkeeping rows past their retention: the hot path must not slow down),
  ``noop_resync_index`` (the same again with ``STREAMER_ETAG_SOURCE=index``, the object
  index filled beforehand as ``objects reconcile`` fills it: no S3 request),
  ``naive_noop_resync`` (the same re-sync through ``naive.run_naive``), and the cost of
  tracing: ``trace_off``, ``trace_1.0`` and ``trace_0.01``, each a first sync of the
  catalog's galleries under new SKUs (every event writes and publishes an outcome), the
  events carrying a ``traceparent`` (one trace per 500, as intake bulks do), with tracing
  off, then on at sampling 1.0 and 0.01 (``parentbased_traceidratio``; spans through the
  SDK's batch processor and encoded as OTLP protobuf, the network send left out).

Each phase reports events, seconds, events/s, images/s, the process's CPU per event
(the consumer with its client threads: librdkafka, obstore, asyncpg), S3 requests,
rows written and peak RSS; for streamer's own phases the log also says which ceiling
binds and how close the phase came to it. A phase is a function registered in
``PHASES``: a new one (say, a re-sync with another ETag source) is one more entry.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import multiprocessing
import os
import resource
import statistics
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

from confluent_kafka import Consumer, TopicPartition
from fastavro import schemaless_reader
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from streamer.contract.codec import SINGLE_OBJECT_MAGIC, Codec
from streamer.contract.events import MediaGalleryChanged
from streamer.contract.publishing import EventPublisher
from streamer.contract.schemas import known_schemas
from streamer.dev.loadgen import generate_catalog, object_paths, upload_objects
from streamer.dev.naive import run_naive
from streamer.gallery.etags import EtagSource, S3EtagSource
from streamer.gallery.handler import GalleryHandler
from streamer.gallery.repository import _UPSERT_IMAGE
from streamer.gallery.worker import gallery_runner
from streamer.objects.reconcile import reconcile
from streamer.objects.worker import make_handler
from streamer.ops.retention import bookkeeping
from streamer.ops.schema import migrate_all
from streamer.ops.topics import create_topics
from streamer.runtime import tracing
from streamer.runtime.database import connect
from streamer.runtime.metrics import new_registry
from streamer.runtime.publisher import Publisher
from streamer.runtime.retention import Pruning
from streamer.settings import Settings
from streamer.storage.clients import make_object_store
from streamer.storage.keys import s3_key

__all__ = [
    "PHASES",
    "BenchContext",
    "BenchResult",
    "Ceilings",
    "Phase",
    "format_table",
    "own_topics",
    "run_benchmark",
]

Log = Callable[[str], None]
TP = tuple[str, int]
_PROGRESS_EVERY_S = 2.0
AGED_PER_SKU = 20  # bookkeeping rows past their retention, per SKU, for noop_resync_pruning


@dataclass(frozen=True)
class Ceilings:
    broker_read_events_per_s: float
    s3_head_per_s: float
    s3_list_keys_per_s: float
    pg_upsert_rows_per_s: float
    # The read+decode loop's own CPU per event (librdkafka's threads included): the floor a
    # phase's CPU per event is held against.
    broker_read_cpu_us_per_event: float = 0.0


@dataclass
class Phase:
    """What one phase did; ``as_json`` is the object ``streamer bench --json`` prints."""

    name: str
    events: int
    images: int
    seconds: float
    cpu_s: float
    s3_requests: int
    rows_written: int
    peak_rss_mb: float
    heads: int = 0
    listed_keys: int = 0
    # Publish (the message's timestamp) to the commit of the batch that applied it, for
    # phases that observe their commits (None where a phase cannot).
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    # What a crash costs, where it is not streamer's exactly-once effect (a peer's phase).
    guarantee: str | None = None

    @classmethod
    def of_heads(
        cls, name: str, result: Any, seconds: float, cpu_s: float, peak_rss_mb: float
    ) -> Phase:
        """A baseline consumer's phase (naive or plain): every S3 request of it is a HEAD."""
        return cls(
            name,
            result.events,
            result.images,
            seconds,
            cpu_s,
            result.heads,
            result.rows_written,
            peak_rss_mb,
            heads=result.heads,
        )

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_event(self) -> float:
        return 1e6 * self.cpu_s / self.events if self.events else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            **({"guarantee": self.guarantee} if self.guarantee else {}),
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.events_per_s, 1),
            "images_per_s": round(self.images_per_s, 1),
            "consumer_cpu_us_per_event": round(self.cpu_us_per_event, 1),
            "s3_requests": self.s3_requests,
            "rows_written": self.rows_written,
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "latency_p50_ms": _rounded(self.latency_p50_ms),
            "latency_p99_ms": _rounded(self.latency_p99_ms),
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


@dataclass
class BenchResult:
    ceilings: Ceilings
    phases: list[Phase] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        c = self.ceilings
        return {
            "ceilings": {
                "broker_read_events_per_s": round(c.broker_read_events_per_s, 1),
                "broker_read_cpu_us_per_event": round(c.broker_read_cpu_us_per_event, 1),
                "s3_head_per_s": round(c.s3_head_per_s, 1),
                "s3_list_keys_per_s": round(c.s3_list_keys_per_s, 1),
                "pg_upsert_rows_per_s": round(c.pg_upsert_rows_per_s, 1),
            },
            "phases": [p.as_json() for p in self.phases],
        }


@dataclass
class BenchContext:
    """What every phase shares: the run's settings (own topics and group), the object pool,
    the catalog's shape and the log."""

    settings: Settings
    run: str
    paths: list[str]
    n_skus: int
    images_per_sku: int
    naive_events: int
    log: Log
    version: int = field(default_factory=lambda: int(time.time() * 1000))
    published: dict[str, dict[TP, int]] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)  # events/s of the phases run so far

    def catalog(self, fresh: str | None = None) -> list[MediaGalleryChanged]:
        """The catalog with a newer version each time: every re-sync is a re-sync. ``fresh``:
        the catalog's galleries under SKUs of their own instead, each one a first sync."""
        self.version += 1
        return generate_catalog(
            self.n_skus,
            self.images_per_sku,
            self.paths,
            version=self.version,
            prefix=f"B{self.run}" + (f"-{fresh}" if fresh else ""),
        )


# -- measuring ----------------------------------------------------------------------------


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _thread_cpu_s() -> dict[str, float]:
    """CPU seconds so far by kind of thread (Linux): the event loop (the main thread, where
    decoding, folding and planning run), librdkafka's, obstore's (tokio) and the rest."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/stat") as stat:
                raw = stat.read()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        seconds = (int(fields[11]) + int(fields[12])) / tick
        if int(tid) == os.getpid():
            kind = "event loop"
        elif name.startswith("rdk:"):
            kind = "librdkafka"
        elif name.startswith("tokio"):
            kind = "obstore"
        else:
            kind = "other threads"
        out[kind] = out.get(kind, 0.0) + seconds
    return out


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU time of the whole machine so far, in clock ticks (Linux)."""
    try:
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: the process's lifetime peak is the best there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def peak_rss() -> Iterator[list[float]]:
    """The process's peak resident memory (MB) while the block runs, sampled every 20 ms."""
    peak = [_rss_mb()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _rss_mb())

    sampler = threading.Thread(target=sample, name="rss", daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()
        peak[0] = max(peak[0], _rss_mb())


class Progress:
    """A line every couple of seconds while a long phase runs: done, total, rate."""

    def __init__(self, name: str, total: int, log: Log) -> None:
        self.name, self.total, self.log = name, total, log
        self.started = self.last = time.monotonic()
        self.done = 0

    def advance(self, n: int) -> None:
        self.update(self.done + n)

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if now - self.last >= _PROGRESS_EVERY_S:
            self.last = now
            rate = done / (now - self.started) if now > self.started else 0.0
            pct = 100 * done / self.total if self.total else 100.0
            self.log(f"  {self.name}: {done:,}/{self.total:,} events ({pct:.0f}%), {rate:,.0f}/s")


Commit = tuple[float, list[tuple[str, int, int, int]]]


class _Commits(logging.Handler):
    """The pipeline's debug record of each committed batch (``committed_at``,
    ``batch_offsets``: ``Pipeline._log_timings``), kept; any other record of its logger is
    handed to the parent logger, as if it had propagated."""

    def __init__(self, parent: logging.Logger | None) -> None:
        super().__init__(logging.DEBUG)
        self.parent = parent
        self.batches: list[Commit] = []

    def emit(self, record: logging.LogRecord) -> None:
        committed_at = getattr(record, "committed_at", None)
        if committed_at is not None:
            self.batches.append((committed_at, getattr(record, "batch_offsets", [])))
        elif record.levelno > logging.DEBUG and self.parent is not None:
            self.parent.handle(record)


@contextmanager
def commits() -> Iterator[_Commits]:
    """Every batch the in-process worker commits meanwhile, with its commit time: the
    pipeline's debug timings switched on for their records alone (a few µs per batch)."""
    logger = logging.getLogger("streamer.runtime.pipeline")
    handler = _Commits(logger.parent)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def publish_times(
    settings: Settings, ranges: Mapping[TP, tuple[int, int]]
) -> dict[TP, dict[int, float]]:
    """The timestamps (Unix seconds) of the messages in each partition's [first, next):
    the producer's CreateTime, set when the bench handed the message to the client."""
    consumer = Consumer(
        settings.kafka.client_config(
            **{
                "group.id": f"{settings.gallery.group_id}-times-{uuid.uuid4().hex[:6]}",
                "enable.auto.commit": False,
            }
        )
    )
    out: dict[TP, dict[int, float]] = {tp: {} for tp in ranges}
    consumer.assign([TopicPartition(t, p, first) for (t, p), (first, _) in ranges.items()])
    left = {tp for tp, (first, end) in ranges.items() if end > first}
    deadline = time.monotonic() + 120
    try:
        while left and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=1):
                tp = (msg.topic() or "", msg.partition() or 0)
                if msg.error() is not None or tp not in left:
                    continue
                offset = msg.offset() or 0
                out[tp][offset] = msg.timestamp()[1] / 1000
                if offset + 1 >= ranges[tp][1]:
                    left.discard(tp)
    finally:
        consumer.close()
    if left:
        raise RuntimeError(f"publish times: partitions {sorted(left)} not read back in 120 s")
    return out


def commit_latencies(settings: Settings, batches: list[Commit], topic: str) -> list[float]:
    """Seconds from each message of ``topic`` to the commit of the batch that applied it."""
    ranges = committed_ranges(batches, topic)
    return latencies_of(batches, topic, publish_times(settings, ranges))


def committed_ranges(batches: list[Commit], topic: str) -> dict[TP, tuple[int, int]]:
    """Each partition of ``topic``: [lowest first, highest next) offset the batches applied."""
    ranges: dict[TP, tuple[int, int]] = {}
    for _, offsets in batches:
        for t, p, first, end in offsets:
            if t == topic:
                lo, hi = ranges.get((t, p), (first, end))
                ranges[(t, p)] = (min(lo, first), max(hi, end))
    return ranges


def latencies_of(
    batches: list[Commit],
    topic: str,
    stamps: Mapping[TP, Mapping[int, float]],
) -> list[float]:
    """``stamps``: each partition's publish times by offset (an offset without a message,
    such as a transaction marker, has none and counts for nothing)."""
    out: list[float] = []
    for committed_at, offsets in batches:
        for t, p, first, end in offsets:
            if t == topic:
                times = stamps[(t, p)]
                out.extend(committed_at - times[o] for o in range(first, end) if o in times)
    return out


def percentiles_ms(seconds: list[float]) -> tuple[float | None, float | None]:
    """p50 and p99 in ms (nearest rank), or None without observations."""
    if not seconds:
        return None, None
    ordered = sorted(seconds)

    def rank(q: float) -> float:
        return 1000 * ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return rank(0.50), rank(0.99)


# -- setting up ---------------------------------------------------------------------------


TRACE_BULK = 500  # events per trace when the catalog is published as traced bulks


def _traceparent(ratio: float) -> list[tuple[str, bytes]]:
    """A bulk's trace context as an intake sampling at ``ratio`` would write it."""
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    sampled = "01" if int(trace_id[16:], 16) < ratio * 2**64 else "00"
    return [("traceparent", f"00-{trace_id}-{span_id}-{sampled}".encode())]


def _publish(
    settings: Settings, events: list[MediaGalleryChanged], *, traced: float | None = None
) -> dict[TP, int]:
    """``traced``: the events carry a trace context per ``TRACE_BULK``, sampled at that ratio."""
    codec = Codec.for_registry(settings.kafka.schema_registry_url)
    with Publisher(settings.kafka) as publisher:
        for start in range(0, len(events), TRACE_BULK):
            headers = _traceparent(traced) if traced is not None else None
            events_out = EventPublisher(publisher, codec, settings.topics, headers=headers)
            for event in events[start : start + TRACE_BULK]:
                events_out.publish(event)
        publisher.flush()
        return dict(publisher.end_offsets)


def publish_catalog(
    ctx: BenchContext, phase: str, *, traced: float | None = None, fresh: str | None = None
) -> tuple[int, dict[TP, int]]:
    """Publish the catalog again; keeps only counts (the events themselves would sit in the
    measured process's heap during the phase)."""
    events = ctx.catalog(fresh)
    started = time.monotonic()
    ends = _publish(ctx.settings, events, traced=traced)
    seconds = time.monotonic() - started
    ctx.log(
        f"{phase}: published {len(events):,} events in {seconds:.1f}s "
        f"({len(events) / seconds:,.0f}/s, acknowledged)"
    )
    ctx.published[phase] = ends
    return len(events), ends


def publish_paced(
    settings: Settings, events: list[MediaGalleryChanged], rate: float
) -> dict[TP, int]:
    """Each event handed to the producer at its time on a fixed schedule (``rate`` a second),
    not in bursts; returns the acknowledged end offsets once all are delivered."""
    codec = Codec.for_registry(settings.kafka.schema_registry_url)
    with Publisher(settings.kafka) as publisher:
        out = EventPublisher(publisher, codec, settings.topics)
        started = time.monotonic()
        for i, event in enumerate(events):
            wait = started + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            out.publish(event)
        publisher.flush()
        return dict(publisher.end_offsets)


async def _drained(
    settings: Settings, ends: dict[TP, int], progress: Progress, timeout_s: float
) -> None:
    """Until every partition's stored offset reached its end (the producer's acknowledged
    offsets: exact, where a dev broker's watermarks may run short). One connection, a
    query every 100 ms: the watching costs the measured process next to nothing."""
    deadline = time.monotonic() + timeout_s
    base = sum(ends.values()) - progress.total
    async with connect(settings.database.dsn) as conn:
        while time.monotonic() < deadline:
            rows = await conn.fetch(
                "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = $1",
                settings.gallery.group_id,
            )
            stored = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
            done = sum(min(max(stored.get(tp, 0), 0), end) for tp, end in ends.items())
            progress.update(done - base)
            if all(end == 0 or stored.get(tp, -1) >= end for tp, end in ends.items()):
                return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{progress.name}: not drained within {timeout_s:.0f}s")


# -- ceilings -----------------------------------------------------------------------------


def broker_read_rate(
    settings: Settings, ends: dict[TP, int], starts: dict[TP, int] | None = None
) -> tuple[float, float]:
    """The floor of any consumer in Python: the messages in [starts, ends) read by the
    fastest plain loop, batch ``consume`` and fastavro's schemaless reader on each value
    (the writer schema parsed once; no validation, no state). Returns events/s and CPU
    seconds per event of the whole process (librdkafka's threads included), clocked from
    the first batch in hand: the connection, metadata and first fetch are set-up, as a
    worker phase's group join is (that favours the floor by one fetch, never streamer)."""
    writers = {fp: k.parsed for fp, k in known_schemas().items()}
    starts = starts or {}
    consumer = Consumer(
        settings.kafka.client_config(
            **{
                "group.id": f"{settings.gallery.group_id}-ceiling-{uuid.uuid4().hex[:6]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": settings.kafka.fetch_wait_max_ms,
            }
        )
    )
    total = sum(end - starts.get(tp, 0) for tp, end in ends.items())
    consumer.assign([TopicPartition(t, p, starts.get((t, p), 0)) for (t, p) in ends])
    read = 0
    try:
        cpu0 = started = 0.0
        deadline = time.monotonic() + 300
        while read < total and time.monotonic() < deadline:
            batch = consumer.consume(num_messages=settings.runtime.batch_max_events, timeout=1)
            if batch and not started:
                cpu0, started = _cpu_s(), time.perf_counter()
            for msg in batch:
                if msg.error() is not None:
                    continue
                value = msg.value()
                if value is None or value[:2] != SINGLE_OBJECT_MAGIC:
                    raise RuntimeError("the floor reads single-object framing only")
                buf = io.BytesIO(value)
                buf.seek(10)
                schemaless_reader(buf, writers[value[2:10]], None)
                read += 1
        seconds, cpu = time.perf_counter() - started, _cpu_s() - cpu0
    finally:
        consumer.close()
    if read != total:
        raise RuntimeError(f"broker read+decode: read {read} of {total} messages")
    return read / seconds, cpu / read


async def s3_rates(ctx: BenchContext) -> tuple[float, float]:
    """HEAD/s and listed keys/s of the S3 server through streamer's client (obstore) at
    its concurrency; logs the client's CPU per request beside them."""
    s = ctx.settings.s3
    store = make_object_store(s)
    keys = [s3_key(s.s3_prefix, p) for p in ctx.paths]
    heads = S3EtagSource(store, mode="head", concurrency=s.head_concurrency)
    sample = keys[: min(len(keys), 1000)]
    cpu0, t0 = _cpu_s(), time.perf_counter()
    await heads.lookup(sample)
    head_s, head_cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    lists = S3EtagSource(store, mode="list", concurrency=s.head_concurrency)
    cpu0, t0 = _cpu_s(), time.perf_counter()
    await lists.lookup(keys)
    list_s, list_cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    listed = lists.totals["listed_keys"]
    await heads.close()
    await lists.close()
    ctx.log(
        f"S3 client CPU: {1000 * head_cpu / len(sample):.2f} ms per HEAD, "
        f"{1000 * list_cpu / max(1, listed):.4f} ms per listed key"
    )
    return len(sample) / head_s, listed / list_s


async def pg_upsert_rate(ctx: BenchContext, rows: int) -> float:
    """The gallery's own set-based upsert, into a scratch copy of its table (logged, as the
    gallery's is: its WAL is written and flushed at each commit), in the worker's batch
    size: rows/s."""
    per_tx = ctx.settings.runtime.batch_max_events * ctx.images_per_sku
    table = f"bench_upsert_{ctx.run}"
    statement = _UPSERT_IMAGE.replace("gallery_images", table)
    async with connect(ctx.settings.database.dsn) as conn:
        await conn.execute(f"CREATE TABLE {table} (LIKE gallery_images INCLUDING ALL)")
        try:
            return await _upserts(conn, statement, rows, per_tx, ctx.images_per_sku)
        finally:
            await conn.execute(f"DROP TABLE {table}")


async def _upserts(conn: Any, statement: str, rows: int, per_tx: int, images_per_sku: int) -> float:
    started = time.perf_counter()
    for first in range(0, rows, per_tx):
        chunk = range(first, min(rows, first + per_tx))
        columns: list[list[Any]] = [
            [f"U{i // images_per_sku:08d}" for i in chunk],
            [f"/u/{i:08d}.jpg" for i in chunk],
            ["0123456789abcdef0123456789abcdef"] * len(chunk),
            [4096] * len(chunk),
            ["image/jpeg"] * len(chunk),
            [f"label {i}" for i in chunk],
            [i % images_per_sku for i in chunk],
            [False] * len(chunk),
            ["image" if i % images_per_sku == 0 else "" for i in chunk],
            [1] * len(chunk),
        ]
        async with conn.transaction():
            await conn.execute(statement, *columns)
    return rows / (time.perf_counter() - started)


async def measure_ceilings(ctx: BenchContext, first_sync_ends: dict[TP, int]) -> Ceilings:
    ctx.log("ceilings: broker read+decode, S3 HEAD and LIST, PostgreSQL upsert ...")
    broker, read_cpu = await asyncio.to_thread(broker_read_rate, ctx.settings, first_sync_ends)
    head, listed = await s3_rates(ctx)
    rows = min(ctx.n_skus * ctx.images_per_sku, 50_000)
    upsert = await pg_upsert_rate(ctx, rows)
    ceilings = Ceilings(broker, head, listed, upsert, 1e6 * read_cpu)
    ctx.log(
        f"ceilings: broker read+decode {broker:,.0f} events/s at {1e6 * read_cpu:,.1f} µs CPU "
        f"per event, S3 HEAD {head:,.0f}/s, "
        f"S3 LIST {listed:,.0f} keys/s, PostgreSQL upsert {upsert:,.0f} rows/s"
    )
    return ceilings


# -- phases -------------------------------------------------------------------------------


def _s3_source(etags: EtagSource) -> EtagSource:
    """The S3 look-up behind a source (the index's fallback, or the source itself)."""
    fallback: EtagSource = getattr(etags, "fallback", etags)
    return fallback


async def worker_phase(
    ctx: BenchContext,
    name: str,
    ends: dict[TP, int] | Callable[[], Awaitable[dict[TP, int]]],
    events: int,
    images: int,
    timeout_s: float,
    settings: Settings | None = None,
    pruning: Pruning | None = None,
) -> Phase:
    """One in-process worker drains what was published; the clock starts once it owns its
    partitions, so the group join is not counted. ``ends`` may be a feed instead, started
    with the clock (a steady publisher): it returns the end offsets once it published all.

    The latency of each media event is its publish (the message's timestamp) to the commit
    of the batch that applied it, read back after the clock stopped."""
    registry = new_registry()
    with commits() as recorded:
        worker = gallery_runner(
            settings or ctx.settings,
            registry=registry,
            install_signal_handlers=False,
            pruning=pruning,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            while not registry.get_sample_value("streamer_assigned_partitions"):
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
            etags = _s3_source(cast(GalleryHandler, worker.handler).etags)
            before = dict(etags.totals) if isinstance(etags, S3EtagSource) else {}
            with peak_rss() as peak:
                threads0, machine0 = _thread_cpu_s(), _machine_busy()
                cpu0, t0 = _cpu_s(), time.monotonic()
                if callable(ends):
                    ends = await ends()
                await _drained(ctx.settings, ends, Progress(name, events, ctx.log), timeout_s)
                seconds, cpu = time.monotonic() - t0, _cpu_s() - cpu0
                threads1, machine = _thread_cpu_s(), _machine_busy()
        finally:
            stop.set()
            await task
    latencies = await asyncio.to_thread(
        commit_latencies, ctx.settings, recorded.batches, ctx.settings.topics.media_topic
    )
    p50, p99 = percentiles_ms(latencies)
    ctx.log(
        f"{name}: publish to commit of {len(latencies):,} events: p50 {p50 or 0:,.0f} ms, "
        f"p99 {p99 or 0:,.0f} ms"
    )
    busy, total = machine[0] - machine0[0], machine[1] - machine0[1]
    threads = {k: v - threads0.get(k, 0.0) for k, v in threads1.items()}
    ctx.log(
        f"{name}: CPU per event by thread: "
        + ", ".join(
            f"{kind} {1e6 * s / events:,.0f} µs"
            for kind, s in sorted(threads.items(), key=lambda kv: -kv[1])
        )
        + (f"; the machine was {100 * busy / total:.0f}% busy" if total else "")
    )
    if pruning is not None:
        pruned = sum(
            s.value
            for m in registry.collect()
            for s in m.samples
            if s.name == "streamer_retention_deleted_rows_total"
        )
        ctx.log(
            f"{name}: the pruner deleted {pruned:,.0f} rows meanwhile ({pruned / seconds:,.0f}/s)"
        )
    totals = etags.totals if isinstance(etags, S3EtagSource) else {}
    delta = {k: totals.get(k, 0) - before.get(k, 0) for k in ("head", "list", "listed_keys")}
    rows = sum(
        registry.get_sample_value("streamer_db_rows_written_total", {"operation": op}) or 0
        for op in ("insert", "update", "delete", "product")
    )
    return Phase(
        name,
        events,
        images,
        seconds,
        cpu,
        delta["head"] + delta["list"],
        int(rows),
        peak[0],
        heads=delta["head"],
        listed_keys=delta["listed_keys"],
        latency_p50_ms=p50,
        latency_p99_ms=p99,
    )


async def first_sync(ctx: BenchContext) -> Phase:
    ends = ctx.published["first_sync"]  # published before the ceilings were measured
    n = ctx.n_skus
    return await worker_phase(ctx, "first_sync", ends, n, n * ctx.images_per_sku, 900)


STEADY_FRACTION = 0.5  # of first_sync's events/s in the same run


async def steady_sync(ctx: BenchContext) -> Phase:
    """The latency users see: the catalog's galleries under SKUs of their own (each a first
    sync: S3 look-ups, writes, an outcome published), published at a fixed rate below
    capacity, ``STEADY_FRACTION`` of ``first_sync``'s events/s in this run, while the worker
    runs. Its events/s is the publishing rate; its latency has no backlog in it. The
    publisher is a process of its own (started and warmed before the clock), so neither its
    CPU nor its GIL is the worker's."""
    base = ctx.rates.get("first_sync")
    if not base:
        raise ValueError(
            "steady_sync publishes at a fraction of first_sync's events/s: run first_sync first"
        )
    rate = STEADY_FRACTION * base
    events = ctx.catalog(fresh=f"steady{ctx.version}")
    n = len(events)
    ctx.log(f"steady_sync: {n:,} new galleries, published at {rate:,.0f}/s while the worker runs")

    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:
        await asyncio.wrap_future(pool.submit(_publisher_ready))

        async def feed() -> dict[TP, int]:
            sent = pool.submit(publish_paced, ctx.settings, events, rate)
            ends: dict[TP, int] = await asyncio.wrap_future(sent)
            ctx.published["steady_sync"] = ends
            return ends

        return await worker_phase(ctx, "steady_sync", feed, n, n * ctx.images_per_sku, 900)


def _publisher_ready() -> None:
    """Run in the publisher's process before the clock: its imports done there."""


async def noop_resync(ctx: BenchContext) -> Phase:
    n, ends = publish_catalog(ctx, "noop_resync")
    return await worker_phase(ctx, "noop_resync", ends, n, n * ctx.images_per_sku, 900)


async def noop_resync_pruning(ctx: BenchContext) -> Phase:
    """The no-op re-sync again, while the worker's retention pruner deletes a backlog of
    ``event_outcomes`` rows dated past their retention (``AGED_PER_SKU`` per SKU, more than it
    can delete during the phase, so it works throughout). Run right after ``noop_resync``
    (or alternate them with ``--phase``): the ratio of the two is the pruner's cost to the
    hot path. The rows are this run's own; any other row of the database older than the
    retention would go too, as it would in production."""
    aged = AGED_PER_SKU * ctx.n_skus
    started = time.monotonic()
    async with connect(ctx.settings.database.dsn) as conn:
        await conn.execute(
            'INSERT INTO event_outcomes (event_id, sku, outcome, topic, partition, "offset",'
            " recorded_at) SELECT gen_random_uuid(), $1 || i, 'written', $1, 0, i,"
            " now() - interval '400 days' + i * interval '1 millisecond'"
            " FROM generate_series(1, $2::int) AS i",
            f"B{ctx.run}-aged-",
            aged,
        )
    ctx.log(
        f"noop_resync_pruning: {aged:,} event_outcomes rows past their retention, "
        f"written in {time.monotonic() - started:.1f}s"
    )
    n, ends = publish_catalog(ctx, "noop_resync_pruning")
    r = ctx.settings.retention
    pruning = Pruning(bookkeeping(r), interval_s=1.0, batch_rows=r.retention_batch_rows)
    phase = await worker_phase(
        ctx, "noop_resync_pruning", ends, n, n * ctx.images_per_sku, 900, pruning=pruning
    )
    async with connect(ctx.settings.database.dsn) as conn:
        left = await conn.fetchval(
            "SELECT count(*) FROM event_outcomes WHERE sku LIKE $1", f"B{ctx.run}-aged-%"
        )
    ctx.log(
        f"noop_resync_pruning: {left:,} aged rows still left at the end (0: it ran out of work)"
    )
    return phase


async def noop_resync_index(ctx: BenchContext) -> Phase:
    """The no-op re-sync with ETags from the object index (filled first, as ``objects
    reconcile`` fills it, not measured): every key a hit, no S3 request."""
    started = time.monotonic()
    s = ctx.settings
    report = await reconcile(s, make_handler(s), prefix=s3_key(s.s3.s3_prefix, "/"))
    ctx.log(
        f"noop_resync_index: index filled with {report.repaired:,} objects in "
        f"{time.monotonic() - started:.1f}s ({report.rechecks} re-checks)"
    )
    n, ends = publish_catalog(ctx, "noop_resync_index")
    indexed = ctx.settings.replace(etag_source="index")
    return await worker_phase(
        ctx, "noop_resync_index", ends, n, n * ctx.images_per_sku, 900, settings=indexed
    )


async def naive_noop_resync(ctx: BenchContext) -> Phase:
    """The no-op re-sync's own messages, through the naive consumer (a subset: it is slow)."""
    limit = min(ctx.naive_events, ctx.n_skus)
    progress = Progress("naive_noop_resync", limit, ctx.log)
    clock: list[float] = []  # CPU and wall clock once its clients are made, as for streamer's

    def ready() -> None:
        clock[:] = [_cpu_s(), time.monotonic()]

    with peak_rss() as peak:
        # From where the no-op re-sync's messages begin: the same messages, read again.
        result = await run_naive(
            ctx.settings,
            ctx.published["first_sync"],
            limit,
            progress=progress.advance,
            ready=ready,
        )
        seconds, cpu = time.monotonic() - clock[1], _cpu_s() - clock[0]
    return Phase.of_heads("naive_noop_resync", result, seconds, cpu, peak[0])


class _EncodingSink(SpanExporter):
    """Spans encoded as an OTLP exporter encodes them, then dropped: the CPU of tracing in
    the worker's process without a collector's (or the network's) share."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Any) -> SpanExportResult:
        encode_spans(spans).SerializeToString()
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _traced_phase(name: str, ratio: float | None) -> Callable[[BenchContext], Awaitable[Phase]]:
    """A first sync of the catalog's galleries under SKUs of the phase's own, published as
    traced bulks, with tracing off (``ratio`` None) or on: every step of a batch is traced
    and every event publishes a ``GalleryUpdated`` (a ``send`` span each while sampled)."""

    async def phase(ctx: BenchContext) -> Phase:
        traced = 1.0 if ratio is None else ratio
        fresh = name.replace("_", "").replace(".", "") + str(ctx.version)  # new each call
        n, ends = publish_catalog(ctx, name, traced=traced, fresh=fresh)
        sink = _EncodingSink()
        if ratio is not None:
            sampler = {
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": str(ratio),
            }
            tracing.configure("streamer-bench", exporter=sink, environ=sampler, batched=True)
        try:
            return await worker_phase(ctx, name, ends, n, n * ctx.images_per_sku, 900)
        finally:
            tracing.shutdown()
            if ratio is not None:
                ctx.log(f"{name}: {sink.spans:,} spans exported ({sink.spans / n:.3f} per event)")

    return phase


PHASES: dict[str, Callable[[BenchContext], Awaitable[Phase]]] = {
    "first_sync": first_sync,
    "noop_resync": noop_resync,
    "noop_resync_pruning": noop_resync_pruning,
    "noop_resync_index": noop_resync_index,
    # After noop_resync: the plain baseline re-reads [first_sync's end, noop_resync's end).
    "steady_sync": steady_sync,
    "naive_noop_resync": naive_noop_resync,
    "trace_off": _traced_phase("trace_off", None),
    "trace_1.0": _traced_phase("trace_1.0", 1.0),
    "trace_0.01": _traced_phase("trace_0.01", 0.01),
}


# -- what binds ---------------------------------------------------------------------------


def binding(phase: Phase, ceilings: Ceilings) -> tuple[str, float]:
    """The ceiling that bounds a phase, in its events/s given what the phase asked of each
    part per event (requests, listed keys, rows)."""
    events = max(1, phase.events)
    s3_s = 0.0
    if phase.heads and ceilings.s3_head_per_s:
        s3_s += phase.heads / events / ceilings.s3_head_per_s
    if phase.listed_keys and ceilings.s3_list_keys_per_s:
        s3_s += phase.listed_keys / events / ceilings.s3_list_keys_per_s
    bounds = {"broker read+decode": ceilings.broker_read_events_per_s}
    if s3_s:
        bounds["S3 server"] = 1 / s3_s
    if phase.rows_written and ceilings.pg_upsert_rows_per_s:
        bounds["PostgreSQL upsert"] = ceilings.pg_upsert_rows_per_s * events / phase.rows_written
    part = min(bounds, key=lambda k: bounds[k])
    return part, bounds[part]


def explain(result: BenchResult, log: Log) -> None:
    for phase in result.phases:
        if phase.name.startswith("naive"):
            continue
        part, limit = binding(phase, result.ceilings)
        floor_cpu = result.ceilings.broker_read_cpu_us_per_event
        cpu_ratio = (
            f"; CPU per event {floor_cpu / phase.cpu_us_per_event:.2f} of read+decode's"
            if floor_cpu and phase.cpu_us_per_event
            else ""
        )
        log(
            f"{phase.name}: {phase.events_per_s / result.ceilings.broker_read_events_per_s:.2f}"
            f" of broker read+decode's events/s{cpu_ratio}; "
            f"bound by {part} at {limit:,.0f} events/s; reached "
            f"{phase.events_per_s / limit:.2f} of it "
            f"({phase.heads / max(1, phase.events):.2f} HEADs, "
            f"{phase.listed_keys / max(1, phase.events):.2f} listed keys, "
            f"{phase.rows_written / max(1, phase.events):.2f} rows per event)"
        )
    by_name = {p.name: p for p in result.phases}
    noop, naive = by_name.get("noop_resync"), by_name.get("naive_noop_resync")
    if noop and naive and naive.events_per_s:
        log(f"noop_resync is {noop.events_per_s / naive.events_per_s:,.1f}x naive_noop_resync")
    plain = [p.events_per_s for p in result.phases if p.name == "noop_resync"]
    pruning = [p.events_per_s for p in result.phases if p.name == "noop_resync_pruning"]
    if plain and pruning:
        log(
            f"noop_resync_pruning ran at {statistics.median(pruning) / statistics.median(plain):.2f}"
            f" of noop_resync's events/s (medians of {len(pruning)} and {len(plain)} runs: "
            + ", ".join(f"{v:,.0f}" for v in pruning)
            + " vs "
            + ", ".join(f"{v:,.0f}" for v in plain)
            + ")"
        )


def _count(n: float) -> str:
    """A count in at most 7 characters: 99,999, then 123.4k, then 12.35M."""
    if n < 100_000:
        return f"{n:,.0f}"
    if n < 1_000_000:
        return f"{n / 1000:.1f}k"
    return f"{n / 1_000_000:.2f}M"


def format_table(result: BenchResult) -> str:
    """The phases in at most 80 columns, one line each, readable in a log."""
    header = (
        f"{'phase':<18}{'events':>8}{'seconds':>8}{'ev/s':>7}{'img/s':>8}"
        f"{'µs/ev':>7}{'S3 req':>8}{'rows':>8}{'RSS MB':>7}"
    )
    lines = [header]
    for p in result.phases:  # every figure fits its column (at most 7 characters)
        lines.append(
            f"{p.name[:17]:<18}{_count(p.events):>8}{p.seconds:>8.1f}{_count(p.events_per_s):>7}"
            f"{_count(p.images_per_s):>8}{_count(p.cpu_us_per_event):>7}{_count(p.s3_requests):>8}"
            f"{_count(p.rows_written):>8}{p.peak_rss_mb:>7,.0f}"
        )
    c = result.ceilings
    lines += [
        "",
        f"ceilings: broker read+decode {c.broker_read_events_per_s:,.0f} events/s, "
        f"S3 HEAD {c.s3_head_per_s:,.0f}/s,",
        f"          S3 LIST {c.s3_list_keys_per_s:,.0f} keys/s, "
        f"PostgreSQL upsert {c.pg_upsert_rows_per_s:,.0f} rows/s",
        "",
        f"{'publish to commit':<18}{'p50 ms':>8}{'p99 ms':>8}{'RSS MB':>8}",
    ]
    for p in result.phases:
        lines.append(
            f"{p.name[:17]:<18}{_ms(p.latency_p50_ms):>8}{_ms(p.latency_p99_ms):>8}"
            f"{p.peak_rss_mb:>8,.0f}"
        )
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else _count(value)


# -- the run ------------------------------------------------------------------------------


def own_topics(kind: str, run: str) -> dict[str, str]:
    """A run's own topics and consumer group (flat settings), so it reads nothing of another's."""
    return {
        "product_topic": f"{kind}-{run}.catalog.product.v1",
        "media_topic": f"{kind}-{run}.catalog.media.v1",
        "outcome_topic": f"{kind}-{run}.catalog.gallery.updated.v1",
        "import_completed_topic": f"{kind}-{run}.catalog.import.completed.v1",
        "dlq_topic": f"{kind}-{run}.catalog.gallery.dlq",
        "objects_topic": f"{kind}-{run}.catalog.objects.v1",
        "group_id": f"streamer-{kind}-{run}",
    }


async def run_benchmark(
    settings: Settings,
    *,
    n_skus: int,
    images_per_sku: int,
    n_objects: int,
    naive_events: int = 1000,
    phases: list[str] | None = None,
    log: Log = print,
    shape: str = "shared",
    extra_phases: Mapping[str, Callable[[BenchContext], Awaitable[Phase]]] | None = None,
) -> BenchResult:
    """Publish first, then start each phase's worker, so a phase measures draining a backlog."""
    known = {**PHASES, **(extra_phases or {})}
    unknown = sorted(set(phases or []) - set(known))
    if unknown:
        raise ValueError(f"unknown phase(s) {', '.join(unknown)}; known: {', '.join(known)}")
    run = uuid.uuid4().hex[:6]
    s = settings.replace(
        **own_topics("bench", run),
        metrics_port=0,
    )
    create_topics(s)
    await migrate_all(s.database.dsn)
    ctx = BenchContext(
        s, run, object_paths(n_objects, shape), n_skus, images_per_sku, naive_events, log
    )
    progress = Progress("upload", n_objects, lambda line: log(line.replace("events", "objects")))
    started = time.monotonic()
    await asyncio.to_thread(upload_objects, s.s3, ctx.paths, progress.advance)
    log(f"uploaded {n_objects:,} objects in {time.monotonic() - started:.1f}s")
    _, first_ends = publish_catalog(ctx, "first_sync")
    result = BenchResult(await measure_ceilings(ctx, first_ends))
    for name in phases or list(known):
        log(f"{name}: running ...")
        phase = await known[name](ctx)
        result.phases.append(phase)
        ctx.rates.setdefault(name, phase.events_per_s)
        log(
            f"{name}: {phase.events:,} events in {phase.seconds:.1f}s, "
            f"{phase.events_per_s:,.0f} events/s, {phase.cpu_us_per_event:,.0f} µs CPU per event"
        )
    explain(result, log)
    return result
