"""Soak: a steady load for a long time, and whether the workers' resources stay flat.

``make soak`` (``SOAK_MINUTES=30`` by default) starts its own embedded stack, two
``streamer consume`` workers, a ``streamer forward`` worker and a counting webhook
receiver, publishes at a fixed rate (a mix of gallery changes and no-op re-syncs
over a rotating set of SKUs), and every ``--sample-s`` seconds records each worker's
resident memory, open file descriptors and open sockets from ``/proc``. At the end it
prints each series' first, last and peak values and its slope (least squares, the
first sample left out as warm-up), writes them as JSON, and exits non-zero when a
slope says the worker grows (memory over 1 MiB a minute, descriptors or sockets
over 0.5 a minute) or the load was not drained.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streamer.contract.codec import Codec
from streamer.contract.events import MediaGalleryChanged
from streamer.contract.publishing import EventPublisher
from streamer.dev.stack import DevStack, database_url_from_env, free_port
from streamer.ops.schema import migrate_all
from streamer.ops.topics import create_topics
from streamer.runtime.database import connect
from streamer.runtime.publisher import Publisher
from streamer.settings import load_settings
from streamer.storage.clients import make_s3_client
from streamer.storage.keys import s3_key

LIMITS = {"rss_mib": 1.0, "fds": 0.5, "sockets": 0.5}  # growth per minute that fails the soak


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
    return {"rss_mib": rss_kib / 1024, "fds": float(len(fds)), "sockets": float(sockets)}


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope, per minute, of (seconds, value) points."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in points) / var


class Soak:
    def __init__(self, minutes: float, rate: float, sample_s: float, home: Path) -> None:
        self.minutes = minutes
        self.rate = rate
        self.sample_s = sample_s
        self.home = home
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.series: dict[str, list[tuple[float, dict[str, float]]]] = {}

    def setup(self) -> None:
        self.stack = DevStack(self.home, database_url=database_url_from_env(), database="soak")
        state = self.stack.up()
        run = uuid.uuid4().hex[:6]
        self.secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
        self.receiver_port = free_port()
        self.settings = load_settings(
            env_file=self.stack.env_file,
            product_topic=f"soak-{run}.product",
            media_topic=f"soak-{run}.media",
            outcome_topic=f"soak-{run}.gallery.updated",
            dlq_topic=f"soak-{run}.dlq",
            group_id=f"soak-{run}",
            forward_group_id=f"soak-{run}-forward",
            s3_prefix=f"soak-{run}/media",
            topic_partitions=6,
            metrics_port=0,
            etag_source="list",
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
        self.env.update(state.env())
        self.env.update(
            {
                "STREAMER_HOME": str(self.home),
                "STREAMER_PRODUCT_TOPIC": self.settings.topics.product_topic,
                "STREAMER_MEDIA_TOPIC": self.settings.topics.media_topic,
                "STREAMER_OUTCOME_TOPIC": self.settings.topics.outcome_topic,
                "STREAMER_DLQ_TOPIC": self.settings.runtime.dlq_topic,
                "STREAMER_GROUP_ID": self.settings.gallery.group_id,
                "STREAMER_FORWARD_GROUP_ID": self.settings.forward.forward_group_id,
                "STREAMER_S3_PREFIX": self.settings.s3.s3_prefix,
                "STREAMER_ETAG_SOURCE": "list",
                "STREAMER_METRICS_PORT": "0",
                "STREAMER_WEBHOOK_URL": f"http://127.0.0.1:{self.receiver_port}/hooks",
                "STREAMER_WEBHOOK_SECRET": self.secret,
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
        self.stack.down()

    def load(self) -> dict[tuple[str, int], int]:
        """Publish at the fixed rate until the time is up; sample every ``sample_s``."""
        codec = Codec()
        publisher = Publisher(self.settings.kafka)
        publisher.start()
        events = EventPublisher(publisher, codec, self.settings.topics)
        started = time.monotonic()
        deadline = started + self.minutes * 60
        next_sample = started
        sent = 0
        version = int(time.time() * 1000)
        n_skus = 2000
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_sample:
                self.record(now - started)
                next_sample += self.sample_s
            due = int((now - started) * self.rate)
            while sent < due:
                version += 1
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
                sent += 1
            publisher.producer.poll(0)
            time.sleep(0.01)
        publisher.flush(120)
        self.published = sent
        return dict(publisher.end_offsets)

    def record(self, at_s: float) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} during the soak")
            self.series.setdefault(name, []).append((at_s, sample(proc.pid)))
        line = "  ".join(
            f"{name}: {s[-1][1]['rss_mib']:.0f} MiB {s[-1][1]['fds']:.0f} fds"
            for name, s in self.series.items()
        )
        print(f"[{at_s / 60:5.1f} min] {line}", flush=True)

    async def drained(self, ends: dict[tuple[str, int], int], timeout_s: float = 300) -> bool:
        deadline = time.monotonic() + timeout_s
        async with connect(self.settings.database.dsn) as conn:
            while time.monotonic() < deadline:
                rows = await conn.fetch(
                    "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = $1",
                    self.settings.gallery.group_id,
                )
                stored = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
                if all(stored.get(tp, -1) >= end for tp, end in ends.items()):
                    return True
                await asyncio.sleep(1)
        return False

    def report(self, drained: bool) -> dict[str, Any]:
        rows = []
        failing = []
        for name, points in self.series.items():
            if name == "receiver":
                continue
            for metric in ("rss_mib", "fds", "sockets"):
                values = [(t, v[metric]) for t, v in points]
                slope = slope_per_min(values[1:])
                rows.append(
                    {
                        "worker": name,
                        "metric": metric,
                        "first": round(values[0][1], 1),
                        "last": round(values[-1][1], 1),
                        "peak": round(max(v for _, v in values), 1),
                        "slope_per_min": round(slope, 3),
                    }
                )
                if slope > LIMITS[metric]:
                    failing.append(f"{name} {metric} grows {slope:.3f}/min")
        report = {
            "minutes": self.minutes,
            "rate_per_s": self.rate,
            "published": self.published,
            "samples": len(next(iter(self.series.values()), [])),
            "drained": drained,
            "series": rows,
            "failing": failing + ([] if drained else ["not drained"]),
        }
        print(f"\nsoak: {self.minutes:g} min at {self.rate:g} events/s, {self.published} events")
        print(
            f"{'worker':<10} {'metric':<8} {'first':>8} {'last':>8} {'peak':>8} {'slope/min':>10}"
        )
        for row in rows:
            print(
                f"{row['worker']:<10} {row['metric']:<8} {row['first']:>8} {row['last']:>8} "
                f"{row['peak']:>8} {row['slope_per_min']:>10}"
            )
        print("drained: yes" if drained else "drained: NO")
        print("flat: yes" if not report["failing"] else f"NOT flat: {report['failing']}")
        return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=100, help="events per second")
    parser.add_argument("--sample-s", type=float, default=60)
    parser.add_argument("--report", type=Path, default=Path("artifacts/soak-report.json"))
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="streamer-soak-"))
    soak = Soak(args.minutes, args.rate, args.sample_s, home)
    soak.setup()
    try:
        soak.start()
        ends = soak.load()
        soak.record(args.minutes * 60)
        drained = asyncio.run(soak.drained(ends))
        report = soak.report(drained)
    finally:
        soak.stop()
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2))
    print(f"report written to {args.report}")
    return 1 if report["failing"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
