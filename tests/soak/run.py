"""Soak: a steady load for a long time; the workers' resources and the bookkeeping stay flat,
and the load drains.

``make soak`` (``SOAK_MINUTES=30``) starts its own embedded stack, two ``streamer consume``
workers, a ``streamer forward`` worker with a counting webhook receiver (batches of up to 10
events: the default rate limit of 50 requests/s is below the ~67 outcomes/s of the load),
and ``streamer serve``; publishes at a fixed rate (``--rate`` events/s over ten seconds'
worth of SKUs, each SKU cycling change, change, no-op; each minute's events under one
request id) and posts a small bulk with an ``Idempotency-Key`` to the intake every
``--bulk-every-s``. The broker is Apache Kafka (``--broker tansu`` for the demo's). Retention is short (``--retention-minutes``),
so the bookkeeping tables (event outcomes, request counts, bulks and their items and
completions, idempotency keys, replays) reach a steady state within the run.

Every ``--sample-s`` it records each process's resident memory, open descriptors and
sockets and CPU from ``/proc``, the rows and bytes of each bookkeeping table, and the
consumer groups' lag (the gallery's: acknowledged offsets minus committed ones; the
forwarder's: the outcome topic's high-water marks minus committed ones). At the end it
waits for the drain (every event committed by both groups, every bulk complete) and reports, as JSON and a table, each series' first, last and peak values and
its slope per minute. Warm-up is left out of the slopes: the workers' series from
``--warmup-minutes`` on, the tables' from when the retention first applied (warm-up plus
retention plus two pruning rounds).

It exits non-zero when the load did not drain within ``--drain-timeout-s``, or when a
slope says something grows: a series fails when its robust slope (Theil-Sen: the median of
the slopes between every two samples, which one outlier cannot move) is over its limit per
minute *and* its growth over the window is over the series' noise (a socket opened and
closed between samples is not a leak in a three-minute slice, ten an hour are).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from confluent_kafka import Consumer, TopicPartition

from streamer.contract.codec import Codec
from streamer.contract.events import MediaGalleryChanged
from streamer.contract.publishing import EventPublisher
from streamer.dev.stack import DevStack, database_url_from_env, free_port
from streamer.ops.schema import migrate_all
from streamer.ops.topics import create_topics
from streamer.runtime.publisher import Publisher
from streamer.settings import load_settings
from streamer.storage.clients import make_s3_client
from streamer.storage.keys import s3_key

# Growth per minute that fails the soak, and growth over the window below which it is noise.
LIMITS = {"rss_mib": 1.0, "fds": 0.5, "sockets": 0.5}
NOISE = {"rss_mib": 8.0, "fds": 4.0, "sockets": 4.0}
TABLES = (
    "event_outcomes",
    "request_outcomes",
    "bulks",
    "bulk_items",
    "import_completions",
    "dead_letter_replays",
    "idempotency_keys",
)
TP = tuple[str, int]
TICK = os.sysconf("SC_CLK_TCK")


def sample(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kib = next(
        int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")
    )
    fds = os.listdir(f"/proc/{pid}/fd")
    sockets = 0
    for fd in fds:
        try:
            sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            continue
    return {
        "rss_mib": rss_kib / 1024,
        "fds": float(len(fds)),
        "sockets": float(sockets),
        "cpu_s": cpu_s(pid),
    }


def cpu_s(pid: int) -> float:
    """CPU seconds of a process and its threads so far (0 when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Theil-Sen slope, per minute, of (seconds, value) points: the median of the slopes
    between every two points, robust to a few outliers (a burst of sockets, a GC)."""
    slopes = [
        (v2 - v1) / (t2 - t1)
        for i, (t1, v1) in enumerate(points)
        for t2, v2 in points[i + 1 :]
        if t2 > t1
    ]
    return 60 * statistics.median(slopes) if slopes else 0.0


@dataclass
class Series:
    """One measured value over time, judged from ``since`` (seconds into the load) on."""

    name: str
    points: list[tuple[float, float]] = field(default_factory=list)

    def judged(self, since: float) -> list[tuple[float, float]]:
        kept = [p for p in self.points if p[0] >= since]
        return kept if len(kept) >= 3 else self.points[-3:]

    def row(self, since: float, limit: float | None, noise: float | None) -> dict[str, Any]:
        window = self.judged(since)
        slope = slope_per_min(window)
        minutes = (window[-1][0] - window[0][0]) / 60 if len(window) > 1 else 0.0
        values = [v for _, v in self.points]
        failing = (
            limit is not None and noise is not None and slope > limit and slope * minutes > noise
        )
        return {
            "series": self.name,
            "first": round(values[0], 1),
            "last": round(values[-1], 1),
            "peak": round(max(values), 1),
            "judged_from_min": round(window[0][0] / 60, 1),
            "slope_per_min": round(slope, 3),
            "growth_in_window": round(slope * minutes, 1),
            "failing": failing,
        }


class Soak:
    def __init__(self, args: argparse.Namespace, home: Path) -> None:
        self.args = args
        self.minutes: float = args.minutes
        self.rate: float = args.rate
        self.home = home
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.series: dict[str, Series] = {}
        self.cpu_last: dict[str, tuple[float, float]] = {}
        self.published = 0
        self.bulks: list[str] = []
        self.bulk_errors: list[str] = []
        self.parts: dict[str, int] = {}
        self.after_drain: dict[str, int] = {}

    # -- set-up ----------------------------------------------------------------------------

    def setup(self) -> None:
        self.stack = DevStack(
            self.home,
            database_url=database_url_from_env(),
            database="soak",
            broker=self.args.broker,
        )
        state = self.stack.up()
        self.parts = {
            name: c.pid
            for name, c in state.components.items()
            if c.owned and c.pid is not None and name != "postgres"
        }
        run = uuid.uuid4().hex[:6]
        self.secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
        self.token = secrets.token_urlsafe(24)
        self.receiver_port = free_port()
        self.api_port = free_port()
        retention_days = self.args.retention_minutes / (24 * 60)
        overrides: dict[str, Any] = {
            "product_topic": f"soak-{run}.product",
            "media_topic": f"soak-{run}.media",
            "outcome_topic": f"soak-{run}.gallery.updated",
            "import_completed_topic": f"soak-{run}.import.completed",
            "objects_topic": f"soak-{run}.objects",
            "dlq_topic": f"soak-{run}.dlq",
            "group_id": f"soak-{run}",
            "forward_group_id": f"soak-{run}-forward",
            "s3_prefix": f"soak-{run}/media",
            "topic_partitions": 6,
            "fetch_wait_max_ms": self.args.fetch_wait_max_ms,
            "metrics_port": 0,
            "etag_source": "list",
            "retention_event_outcomes_days": retention_days,
            "retention_request_outcomes_days": retention_days,
            "retention_bulk_items_days": retention_days,
            "retention_import_completions_days": retention_days,
            "retention_dead_letter_replays_days": retention_days,
            "retention_idempotency_keys_days": retention_days,
            "retention_interval_s": self.args.retention_interval_s,
            "api_port": self.api_port,
            "completion_delivery_timeout_s": 2.0,
            "completion_poll_interval_s": 1.0,
            # Two of three events change a gallery: ~67 outcomes/s, over the default rate
            # limit of 50 requests/s. Batches of up to 10 events deliver them (unbatched, the
            # forwarder falls behind by design, and its prefetched backlog grows its memory).
            "webhook_batch_max_events": 10,
        }
        self.settings = load_settings(env_file=self.stack.env_file, **overrides)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
        self.env.update(state.env())
        self.env.update({f"STREAMER_{k.upper()}": str(v) for k, v in overrides.items()})
        self.env.update(
            {
                "STREAMER_HOME": str(self.home),
                "STREAMER_WEBHOOK_URL": f"http://127.0.0.1:{self.receiver_port}/hooks",
                "STREAMER_WEBHOOK_SECRET": self.secret,
                "STREAMER_API_TOKENS": self.token,
                "STREAMER_LOG_LEVEL": self.args.log_level,
            }
        )
        create_topics(self.settings)
        asyncio.run(migrate_all(self.settings.database.dsn))
        s3 = make_s3_client(self.settings.s3, max_pool_connections=16)
        self.paths = [f"/soak/{i // 100:02d}/img-{i:04d}.jpg" for i in range(500)]
        for path in self.paths:
            s3.put_object(
                Bucket=self.settings.s3.s3_bucket,
                Key=s3_key(self.settings.s3.s3_prefix, path),
                Body=path.encode() * 20,
            )

    def start(self) -> None:
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        commands = {
            "receiver": [sys.executable, "-m", "streamer.dev.receiver", str(self.receiver_port)],
            "consume-1": [sys.executable, "-m", "streamer", "consume"],
            "consume-2": [sys.executable, "-m", "streamer", "consume"],
            "forward": [sys.executable, "-m", "streamer", "forward"],
            "serve": [sys.executable, "-m", "streamer", "serve"],
        }
        for name, argv in commands.items():
            with (logs / f"soak-{name}.log").open("wb") as out:
                self.procs[name] = subprocess.Popen(
                    argv, env=self.env, stdout=out, stderr=subprocess.STDOUT
                )

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.stack.down()

    # -- the load --------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        self.load_avg_start = os.getloadavg()
        busy0 = machine_ticks()
        conn = await asyncpg.connect(self.settings.database.dsn)
        self.watermarks = Consumer(
            self.settings.kafka.client_config(
                **{
                    "group.id": f"{self.settings.gallery.group_id}-soak",
                    "enable.auto.commit": False,
                }
            )
        )
        try:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{self.api_port}",
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=60,
            ) as http:
                await self._wait_for_api(http)
                ends = await self.load(conn, http)
                drain_started = time.monotonic()
                self.drained = await self.wait_drained(conn, http, ends)
                self.drain_s = time.monotonic() - drain_started
                # After the load, outside the judged series: the tables empty as rows age out.
                self.after_drain = {
                    t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES
                }
        finally:
            await conn.close()
            self.watermarks.close()
        busy1 = machine_ticks()
        self.machine_busy = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
        self.load_avg_end = os.getloadavg()
        return self.report()

    async def _wait_for_api(self, http: httpx.AsyncClient) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if (await http.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError("streamer serve did not answer within 60 s")

    async def load(self, conn: asyncpg.Connection, http: httpx.AsyncClient) -> dict[TP, int]:
        """Publish at the fixed rate until the time is up; sample every ``--sample-s``."""
        codec = Codec()
        publisher = Publisher(self.settings.kafka)
        publisher.start()
        events = EventPublisher(publisher, codec, self.settings.topics)
        started = time.monotonic()
        deadline = started + self.minutes * 60
        next_sample, next_bulk = started, started
        bulks: set[asyncio.Task[None]] = set()
        version = int(time.time() * 1000)
        # A pass over the SKUs takes 10 s; each SKU cycles change, change, no-op: outcome rows
        # arrive in a 30 s cycle, which any retention of a whole number of cycles smooths out.
        n_skus = max(1, int(self.rate * 10))
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_sample:
                await self.record(conn, dict(publisher.end_offsets), now - started)
                next_sample += self.args.sample_s
            if now >= next_bulk:
                task = asyncio.create_task(self.post_bulk(http, len(self.bulks)))
                bulks.add(task)
                task.add_done_callback(bulks.discard)
                next_bulk += self.args.bulk_every_s
            due = int((now - started) * self.rate)
            while self.published < due:
                version += 1
                sent = self.published
                sku = f"SOAK-{sent % n_skus:05d}"
                revision = (sent // n_skus) % 3  # each SKU cycles: change, change, no-op
                i = sent % n_skus
                chosen = [self.paths[(i * 7 + k * 13) % len(self.paths)] for k in range(3)]
                events.publish(
                    MediaGalleryChanged.model_validate(
                        {
                            "event_id": str(uuid.uuid4()),
                            "sku": sku,
                            "version": version,
                            "occurred_at": datetime.now(UTC),
                            "source": "soak",
                            "request_id": f"soak-minute-{int((now - started) // 60)}",
                            "mode": "REPLACE",
                            "images": [
                                {
                                    "file_path": p,
                                    "label": f"{sku} r{min(revision, 1)}",
                                    "position": k,
                                }
                                for k, p in enumerate(chosen)
                            ],
                        }
                    )
                )
                self.published += 1
            publisher.producer.poll(0)
            await asyncio.sleep(0.01)
        publisher.flush(120)
        await asyncio.gather(*bulks, return_exceptions=True)
        ends = dict(publisher.end_offsets)
        publisher.close()
        return ends

    async def post_bulk(self, http: httpx.AsyncClient, n: int) -> None:
        """A small bulk through the intake: bulks, items and a completion to keep and prune."""
        payload = {
            "request": {
                "request_id": f"soak-bulk-{n}",
                "items": [
                    {
                        "sku": f"SOAK-BULK-{(n * 10 + i) % 500:03d}",
                        "images": [{"file_path": self.paths[(n + i) % len(self.paths)]}],
                    }
                    for i in range(10)
                ],
            }
        }
        try:
            reply = await http.post(
                "/v1/galleries/bulk", json=payload, headers={"Idempotency-Key": f"soak-{n}"}
            )
            if reply.status_code == 202:
                self.bulks.append(reply.json()["bulk_uuid"])
            else:
                self.bulk_errors.append(f"{reply.status_code} {reply.text[:200]}")
        except httpx.HTTPError as exc:
            self.bulk_errors.append(f"{type(exc).__name__}: {exc}")

    # -- measuring -------------------------------------------------------------------------

    def _add(self, name: str, at_s: float, value: float) -> None:
        self.series.setdefault(name, Series(name)).points.append((at_s, value))

    async def record(self, conn: asyncpg.Connection, ends: dict[TP, int], at_s: float) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} during the soak")
            values = sample(proc.pid)
            for metric in ("rss_mib", "fds", "sockets"):
                self._add(f"{name} {metric}", at_s, values[metric])
            self._cpu(name, values["cpu_s"], at_s)
        for name, pid in self.parts.items():
            self._cpu(f"stack:{name}", cpu_s(pid), at_s)
        for table in TABLES:
            rows = await conn.fetchval(f"SELECT count(*) FROM {table}")
            size = await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", table)
            self._add(f"{table} rows", at_s, float(rows))
            self._add(f"{table} MiB", at_s, size / 2**20)
        lag = sum(max(0, end - offset) for (_tp, end, offset) in await self._positions(conn, ends))
        self._add("gallery lag", at_s, float(lag))
        forward_lag = sum(
            max(0, end - offset) for (_tp, end, offset) in await self._forward_positions(conn)
        )
        self._add("forward lag", at_s, float(forward_lag))
        rss = "  ".join(
            f"{n}: {self.series[f'{n} rss_mib'].points[-1][1]:.0f} MiB "
            f"{self.series[f'{n} fds'].points[-1][1]:.0f} fds"
            for n in self.procs
        )
        print(
            f"[{at_s / 60:5.1f} min] lag {lag:>6,.0f} (forward {forward_lag:,.0f})  event_outcomes "
            f"{self.series['event_outcomes rows'].points[-1][1]:>7,.0f} rows  {rss}",
            flush=True,
        )

    def _cpu(self, name: str, seconds: float, at_s: float) -> None:
        before = self.cpu_last.get(name)
        self.cpu_last[name] = (at_s, seconds)
        if before is not None and at_s > before[0]:
            self._add(f"{name} cpu_pct", at_s, 100 * (seconds - before[1]) / (at_s - before[0]))

    async def _positions(
        self, conn: asyncpg.Connection, ends: dict[TP, int]
    ) -> list[tuple[TP, int, int]]:
        rows = await conn.fetch(
            "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = $1",
            self.settings.gallery.group_id,
        )
        stored = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
        return [(tp, end, stored.get(tp, 0)) for tp, end in ends.items()]

    async def _forward_positions(self, conn: asyncpg.Connection) -> list[tuple[TP, int, int]]:
        """The forwarder's committed offsets against the outcome topic's high-water marks
        (the gallery's outputs: no producer here knows their ends)."""
        topic = self.settings.topics.outcome_topic

        def marks() -> dict[TP, int]:
            meta = self.watermarks.list_topics(topic, timeout=10).topics[topic]
            return {
                (topic, p): self.watermarks.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=10, cached=False
                )[1]
                for p in meta.partitions
            }

        ends = await asyncio.to_thread(marks)
        rows = await conn.fetch(
            "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = $1",
            self.settings.forward.forward_group_id,
        )
        stored = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
        return [(tp, end, stored.get(tp, 0)) for tp, end in ends.items()]

    async def wait_drained(
        self, conn: asyncpg.Connection, http: httpx.AsyncClient, ends: dict[TP, int]
    ) -> bool:
        """Every acknowledged event committed by the gallery group, and every bulk complete."""
        deadline = time.monotonic() + self.args.drain_timeout_s
        while time.monotonic() < deadline:
            behind = [tp for tp, end, offset in await self._positions(conn, ends) if offset < end]
            if not behind:
                open_bulks = await conn.fetchval(
                    "SELECT count(*) FROM bulks WHERE completed_at IS NULL"
                    " AND state IN ('accepted', 'partial')"
                )
                # Once the gallery drained, the outcome topic is complete: the forwarder next.
                forward = [
                    tp for tp, end, offset in await self._forward_positions(conn) if offset < end
                ]
                if open_bulks == 0 and not forward:
                    return True
            await asyncio.sleep(1)
        return False

    # -- the verdict -----------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        args = self.args
        warmup_s = args.warmup_minutes * 60
        steady_s = warmup_s + args.retention_minutes * 60 + 2 * args.retention_interval_s
        rows: list[dict[str, Any]] = []
        for name, series in self.series.items():
            process, _, metric = name.rpartition(" ")
            if metric in LIMITS and process != "receiver":
                rows.append(series.row(warmup_s, LIMITS[metric], NOISE[metric]))
            elif metric == "rows":
                mean = (
                    statistics.fmean(v for t, v in series.points if t >= steady_s)
                    if any(t >= steady_s for t, _ in series.points)
                    else 0.0
                )
                # A table fails when it grows by more than a quarter of its steady size (or
                # 100 rows) over the window: a sawtooth of prunes is not growth, a table
                # nobody prunes is.
                rows.append(series.row(steady_s, 0.0, max(100.0, 0.25 * mean)))
            else:
                rows.append(series.row(warmup_s, None, None))
        failing = [f"{r['series']} grows {r['slope_per_min']}/min" for r in rows if r["failing"]]
        if not self.drained:
            failing.append(f"not drained within {args.drain_timeout_s:.0f} s of the end")
        if self.bulk_errors:
            failing.append(f"{len(self.bulk_errors)} bulks refused: {self.bulk_errors[:3]}")
        report = {
            "minutes": self.minutes,
            "rate_per_s": self.rate,
            "published": self.published,
            "bulks": len(self.bulks),
            "warmup_minutes": args.warmup_minutes,
            "retention_minutes": args.retention_minutes,
            "tables_judged_from_min": round(steady_s / 60, 1),
            "drained": self.drained,
            "drain_s": round(self.drain_s, 1),
            "table_rows_after_drain": self.after_drain,
            "machine_busy": round(self.machine_busy, 3),
            "load_average_start": [round(v, 2) for v in self.load_avg_start],
            "load_average_end": [round(v, 2) for v in self.load_avg_end],
            "series": rows,
            "failing": failing,
        }
        print(
            f"\nsoak: {self.minutes:g} min at {self.rate:g} events/s, {self.published:,} events "
            f"and {len(self.bulks)} bulks; warm-up {args.warmup_minutes:g} min left out, tables "
            f"judged from {steady_s / 60:.1f} min (retention {args.retention_minutes:g} min)"
        )
        print(
            f"{'series':<34} {'first':>9} {'last':>9} {'peak':>9} {'from':>5} "
            f"{'slope/min':>10} {'growth':>8}"
        )
        for r in rows:
            print(
                f"{r['series']:<34} {r['first']:>9} {r['last']:>9} {r['peak']:>9} "
                f"{r['judged_from_min']:>5} {r['slope_per_min']:>10} {r['growth_in_window']:>8}"
                + ("  <- grows" if r["failing"] else "")
            )
        print(
            f"machine {100 * self.machine_busy:.0f}% busy during the run; load average "
            f"{self.load_avg_start[0]:.1f} at the start, {self.load_avg_end[0]:.1f} at the end"
        )
        print(
            f"drained: yes, {self.drain_s:.0f} s after the end" if self.drained else "drained: NO"
        )
        print(f"bookkeeping rows after the drain: {self.after_drain}")
        print("flat: yes" if not failing else f"NOT flat or not drained: {failing}")
        return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=100, help="events per second")
    parser.add_argument("--sample-s", type=float, default=None, help="default: 36 per run, 5-30 s")
    parser.add_argument(
        "--warmup-minutes", type=float, default=None, help="default: min(5, a sixth of the run)"
    )
    parser.add_argument(
        "--retention-minutes", type=float, default=None, help="default: min(5, a sixth of the run)"
    )
    parser.add_argument(
        "--retention-interval-s", type=float, default=None, help="default: retention / 10"
    )
    parser.add_argument(
        "--bulk-every-s", type=float, default=10, help="a 10-item bulk to the intake"
    )
    parser.add_argument("--drain-timeout-s", type=float, default=300)
    parser.add_argument(
        "--broker",
        choices=("kafka", "tansu"),
        default="kafka",
        help="Apache Kafka, what users run (default); Tansu, the demo's broker, answers each "
        "fetch in time that grows with the partition's length: it cannot hold this load for long",
    )
    parser.add_argument(
        "--fetch-wait-max-ms",
        type=int,
        default=100,
        help="the workers' fetch wait (the dev stack's 10 re-fetches 100 times a second)",
    )
    parser.add_argument("--report", type=Path, default=Path("artifacts/soak-report.json"))
    parser.add_argument(
        "--log-level", default="INFO", help="the workers' (DEBUG: per-batch timings)"
    )
    args = parser.parse_args()
    sixth = max(0.5, min(5.0, args.minutes / 6))
    if args.sample_s is None:
        args.sample_s = min(30.0, max(5.0, args.minutes * 60 / 36))
    if args.warmup_minutes is None:
        args.warmup_minutes = sixth
    if args.retention_minutes is None:
        args.retention_minutes = sixth
    if args.retention_interval_s is None:
        args.retention_interval_s = max(5.0, args.retention_minutes * 6)
    home = Path(tempfile.mkdtemp(prefix="streamer-soak-"))
    soak = Soak(args, home)
    soak.setup()
    try:
        soak.start()
        report = asyncio.run(soak.run())
    finally:
        soak.stop()
        print(f"logs in {home / 'logs'}")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2))
    print(f"report written to {args.report}")
    return 1 if report["failing"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
