"""``make bench-scale``: the no-op re-sync through the object index, drained by 1, 2 and 4
``streamer consume`` processes in one run, on the configured stack (run it on Apache Kafka:
``streamer dev up --broker kafka``; it runs on Tansu too).

    python -m benchmarks.scale [--processes 1,2,4] [--skus 5000] [--versions 4] [--json-out F]

The run's own topics have ``--partitions`` partitions each (12). The index is filled and the
catalog's first sync drained once (by one process, not measured); then each step drains a
backlog of ``--versions`` newer versions of every gallery (no-ops: ``skus x versions``
events). Each process is a real ``streamer consume`` with its own metrics port, scraped
for its assigned partitions and its messages. The backlog is encoded beforehand and
produced as bytes only once every process holds partitions and together they hold all of
them (the group join is not counted, and no process drains a part before the others
joined); the clock starts with that produce (a fraction of a second: the
pre-encoded messages go out far faster than any step drains them) and stops when the
committed offsets (PostgreSQL's ``consumer_offsets``, the worker's own) reach its end. A step reports events/s in total and per process, the ratio to the first step's, the
processes' CPU per event (``/proc``, all their threads) and how busy the whole machine was:
with 2 cores, the broker and PostgreSQL beside them, more processes cannot scale linearly,
and the CPU figures show where it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from streamer.contract.codec import Codec
from streamer.contract.publishing import topic_for
from streamer.dev.bench import BenchContext, Progress, _drained, _machine_busy, own_topics
from streamer.dev.loadgen import object_paths, upload_objects
from streamer.objects.reconcile import reconcile
from streamer.objects.worker import make_handler
from streamer.ops.schema import migrate_all
from streamer.ops.topics import create_topics
from streamer.runtime.publisher import Publisher
from streamer.settings import Settings, load_settings
from streamer.storage.keys import s3_key

TP = tuple[str, int]
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Step:
    processes: int
    events: int
    seconds: float
    events_per_s: float
    per_process_events_per_s: list[float]
    cpu_us_per_event: float
    workers_cpu_cores: float  # the processes' CPU seconds per second: cores they kept busy
    machine_busy_pct: float
    load_average_1m: list[float]
    ratio_to_first: float = 0.0


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            raw = stat.read()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _scrape(port: int) -> tuple[float, float]:
    """A worker's assigned partitions and messages consumed so far (0, 0 until it serves)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return 0.0, 0.0
    assigned = consumed = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "streamer_assigned_partitions":
                assigned = sample.value
            elif sample.name == "streamer_messages_consumed_total":
                consumed += sample.value
    return assigned, consumed


class Workers:
    """``n`` ``streamer consume`` processes on the run's topics and group, each logging to
    its own file and serving metrics on its own port."""

    def __init__(self, settings: Settings, env: dict[str, str], n: int, logs: Path) -> None:
        self.ports = [_free_port() for _ in range(n)]
        self.procs: list[subprocess.Popen[bytes]] = []
        logs.mkdir(parents=True, exist_ok=True)
        for i, port in enumerate(self.ports):
            out = (logs / f"worker-{n}-{i}.log").open("ab")
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "streamer", "consume"],
                    env={**os.environ, **env, "STREAMER_METRICS_PORT": str(port)},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )
            out.close()

    def scrape(self) -> list[tuple[float, float]]:
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"worker pid {proc.pid} exited with {proc.returncode}")
        return [_scrape(port) for port in self.ports]

    def cpu_s(self) -> list[float]:
        return [_cpu_s(p.pid) for p in self.procs]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


Message = tuple[str, bytes, bytes]  # topic, key, value


def encode_backlog(ctx: BenchContext, versions: int) -> list[Message]:
    """``versions`` newer versions of the catalog, encoded as the publisher would."""
    codec = Codec.for_registry(ctx.settings.kafka.schema_registry_url)
    out: list[Message] = []
    for _ in range(versions):
        for event in ctx.catalog():
            topic = topic_for(event, ctx.settings.topics)
            out.append((topic, event.sku.encode(), codec.encode(event, topic=topic)))
    return out


def produce(settings: Settings, messages: list[Message]) -> dict[TP, int]:
    with Publisher(settings.kafka) as publisher:
        for topic, key, value in messages:
            publisher.produce(topic, value, key=key)
        publisher.flush()
        return dict(publisher.end_offsets)


async def run_step(
    ctx: BenchContext, env: dict[str, str], n: int, messages: list[Message], all_partitions: int
) -> Step:
    workers = Workers(ctx.settings, env, n, Path(".streamer") / "bench-scale" / ctx.run)
    try:
        deadline = time.monotonic() + 180
        while True:
            scraped = workers.scrape()
            held = [a for a, _ in scraped]
            if all(held) and sum(held) == all_partitions:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{n} workers: partitions held {held} of {all_partitions}")
            await asyncio.sleep(0.1)
        consumed0 = [c for _, c in scraped]
        cpu0, machine0, load0 = workers.cpu_s(), _machine_busy(), os.getloadavg()[0]
        t0, left = time.monotonic(), len(messages)
        ends = await asyncio.to_thread(produce, ctx.settings, messages)
        await _drained(ctx.settings, ends, Progress(f"{n} process(es)", left, ctx.log), 900)
        seconds = time.monotonic() - t0
        cpu1, machine1, load1 = workers.cpu_s(), _machine_busy(), os.getloadavg()[0]
        consumed1 = [c for _, c in workers.scrape()]
    finally:
        workers.stop()
    cpu = sum(cpu1) - sum(cpu0)
    busy, total = machine1[0] - machine0[0], machine1[1] - machine0[1]
    return Step(
        processes=n,
        events=left,
        seconds=round(seconds, 3),
        events_per_s=round(left / seconds, 1),
        per_process_events_per_s=[
            round((b - a) / seconds, 1) for a, b in zip(consumed0, consumed1, strict=True)
        ],
        cpu_us_per_event=round(1e6 * cpu / max(1, left), 1),
        workers_cpu_cores=round(cpu / seconds, 2),
        machine_busy_pct=round(100 * busy / total, 1) if total else 0.0,
        load_average_1m=[round(load0, 2), round(load1, 2)],
    )


async def main(args: argparse.Namespace) -> dict[str, Any]:
    counts = [int(n) for n in args.processes.split(",")]
    run = uuid.uuid4().hex[:6]
    topics = own_topics("scale", run)
    s = load_settings().replace(**topics, etag_source="index", metrics_port=0)
    env = {f"STREAMER_{k.upper()}": v for k, v in topics.items()}
    env["STREAMER_ETAG_SOURCE"] = "index"
    create_topics(s, partitions=args.partitions)
    await migrate_all(s.database.dsn)
    ctx = BenchContext(s, run, object_paths(args.objects, "shared"), args.skus, args.images, 0, log)
    started = time.monotonic()
    await asyncio.to_thread(upload_objects, s.s3, ctx.paths, None)
    report = await reconcile(s, make_handler(s), prefix=s3_key(s.s3.s3_prefix, "/"))
    log(
        f"{args.objects:,} objects uploaded and indexed ({report.repaired:,}) in "
        f"{time.monotonic() - started:.1f}s"
    )
    all_partitions = 2 * args.partitions  # the gallery consumes its product and media topics
    first = await run_step(ctx, env, 1, encode_backlog(ctx, 1), all_partitions)
    log(f"first sync (not a step): {first.events:,} events at {first.events_per_s:,.0f}/s")
    steps: list[Step] = []
    for n in counts:
        step = await run_step(ctx, env, n, encode_backlog(ctx, args.versions), all_partitions)
        step.ratio_to_first = round(step.events_per_s / steps[0].events_per_s, 2) if steps else 1.0
        steps.append(step)
        log(
            f"{n} process(es): {step.events:,} events in {step.seconds:.1f}s, "
            f"{step.events_per_s:,.0f}/s ({step.ratio_to_first:.2f}x), "
            f"{step.cpu_us_per_event:,.0f} µs CPU per event, workers {step.workers_cpu_cores:.2f}"
            f" cores, machine {step.machine_busy_pct:.0f}% busy, load {step.load_average_1m}"
        )
    log(format_steps(steps, os.cpu_count() or 1))
    return {
        "run": {
            "skus": args.skus,
            "versions": args.versions,
            "partitions": args.partitions,
            "images_per_sku": args.images,
            "cores": os.cpu_count(),
            "workload": "noop_resync_index",
        },
        "steps": [asdict(step) for step in steps],
    }


def format_steps(steps: list[Step], cores: int) -> str:
    lines = [
        f"{'procs':>5}{'events':>8}{'ev/s':>8}{'x 1':>6}{'ev/s/proc':>26}{'µs/ev':>7}"
        f"{'cores used':>11}{'busy':>6}{'load':>12}"
    ]
    for s in steps:
        per = "/".join(f"{v:,.0f}" for v in s.per_process_events_per_s)
        lines.append(
            f"{s.processes:>5}{s.events:>8,}{s.events_per_s:>8,.0f}{s.ratio_to_first:>6.2f}"
            f"{per:>26}{s.cpu_us_per_event:>7,.0f}{s.workers_cpu_cores:>6.2f} of {cores}"
            f"{s.machine_busy_pct:>5.0f}%{s.load_average_1m[0]:>6.1f}{s.load_average_1m[1]:>6.1f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", default="1,2,4", help="worker processes per step")
    parser.add_argument("--skus", type=int, default=5000)
    parser.add_argument("--versions", type=int, default=4, help="backlog: versions per SKU")
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--json-out", help="write the JSON object here")
    args = parser.parse_args()
    out = json.dumps(asyncio.run(main(args)), indent=2)
    if args.json_out:
        Path(args.json_out).write_text(out + "\n")
    print(out)
