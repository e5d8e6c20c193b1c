"""The no-op path beside its floor, in one run: ``noop_resync_index`` and the honest
read+decode ceiling measured on the same messages, round after round.

    streamer dev up && python -m benchmarks.noop_hotpath --skus 20000 --rounds 3 [--profile DIR]

The floor is ``bench.broker_read_rate``, the fastest plain loop a Python consumer can be:
``consume()`` in batches and fastavro's ``schemaless_reader`` on each value (the schema
parsed once), nothing else (no validation, no state).
Each round publishes the catalog again (newer versions: every event a no-op), reads and
decodes that round's messages with the plain loop, drains them with one gallery worker
(``STREAMER_ETAG_SOURCE=index``, the index filled first: no S3 request), then reads them
with the plain loop again; the ratio is the worker's events/s over the mean of the two
floors (1.0: a no-op costs no more than reading and decoding it), and the same for CPU
per event. Ratios are taken within a round because the machine is shared.

``--profile DIR`` samples the worker's process with py-spy during one extra round (not
counted: sampling slows it) and writes the raw stacks there. ``streamer/dev/bench.py`` is
the package's benchmark; this script uses its phase machinery and its floor, round after
round, for a closer look at the one phase (``--profile``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from streamer.dev.bench import (
    BenchContext,
    Phase,
    _machine_busy,
    broker_read_rate,
    first_sync,
    publish_catalog,
    worker_phase,
)
from streamer.dev.loadgen import object_paths, upload_objects
from streamer.objects.reconcile import reconcile
from streamer.objects.worker import make_handler
from streamer.ops.schema import migrate_all
from streamer.ops.topics import create_topics
from streamer.settings import load_settings
from streamer.storage.keys import s3_key


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextmanager
def sampled(path: Path | None, rate_hz: int) -> Iterator[None]:
    """py-spy attached to this process while the block runs (raw stacks, threads named)."""
    if path is None:
        yield
        return
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(os.getpid()),
            "--rate",
            str(rate_hz),
            "--format",
            "raw",
            "--threads",
            "--native",
            "-o",
            str(path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    run = uuid.uuid4().hex[:6]
    s = load_settings().replace(
        product_topic=f"hot-{run}.catalog.product.v1",
        media_topic=f"hot-{run}.catalog.media.v1",
        outcome_topic=f"hot-{run}.catalog.gallery.updated.v1",
        dlq_topic=f"hot-{run}.catalog.gallery.dlq",
        objects_topic=f"hot-{run}.catalog.objects.v1",
        group_id=f"streamer-hot-{run}",
        metrics_port=0,
    )
    create_topics(s)
    await migrate_all(s.database.dsn)
    ctx = BenchContext(s, run, object_paths(args.objects), args.skus, args.images, 0, log)
    if not args.no_upload:
        await asyncio.to_thread(upload_objects, s.s3, ctx.paths)
    publish_catalog(ctx, "first_sync")
    first = await first_sync(ctx)
    log(f"first_sync: {first.events_per_s:,.0f} events/s, {first.cpu_us_per_event:,.0f} µs/event")
    report = await reconcile(s, make_handler(s), prefix=s3_key(s.s3.s3_prefix, "/"))
    log(f"index filled with {report.repaired:,} objects")
    indexed = s.replace(etag_source="index")
    rounds: list[dict[str, Any]] = []
    previous = ctx.published["first_sync"]
    plan = [("profile", i) for i in range(1 if args.profile else 0)]
    plan += [("measure", i) for i in range(args.rounds)]
    for kind, i in plan:
        name = f"noop_{kind}_{i}"
        n, ends = publish_catalog(ctx, name)
        busy0 = _machine_busy()
        floor0 = await asyncio.to_thread(broker_read_rate, s, ends, previous)
        profile = Path(args.profile) / f"{name}.txt" if kind == "profile" else None
        with sampled(profile, args.rate):
            phase: Phase = await worker_phase(
                ctx, name, ends, n, n * args.images, 900, settings=indexed
            )
        floor1 = await asyncio.to_thread(broker_read_rate, s, ends, previous)
        busy1 = _machine_busy()
        previous = ends
        floor_eps = statistics.mean([floor0[0], floor1[0]])
        floor_cpu = statistics.mean([floor0[1], floor1[1]])
        total = busy1[1] - busy0[1]
        row = {
            "round": name,
            "events": n,
            "phase_events_per_s": round(phase.events_per_s, 1),
            "phase_cpu_us_per_event": round(phase.cpu_us_per_event, 1),
            "rows_written": phase.rows_written,
            "s3_requests": phase.s3_requests,
            "floor_events_per_s": [round(floor0[0], 1), round(floor1[0], 1)],
            "floor_cpu_us_per_event": [round(1e6 * floor0[1], 1), round(1e6 * floor1[1], 1)],
            "ratio_events_per_s": round(phase.events_per_s / floor_eps, 3),
            "ratio_cpu": round(1e6 * floor_cpu / phase.cpu_us_per_event, 3),
            "machine_busy_pct": round(100 * (busy1[0] - busy0[0]) / total, 1) if total else None,
            "loadavg": os.getloadavg()[0],
        }
        log(json.dumps(row))
        if kind == "measure":
            rounds.append(row)
    return {
        "skus": args.skus,
        "images": args.images,
        "first_sync": first.as_json(),
        "rounds": rounds,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skus", type=int, default=20_000)
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--objects", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--no-upload", action="store_true", help="the objects are in the bucket from a last run"
    )
    parser.add_argument("--profile", help="directory for py-spy's raw stacks of one extra round")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    args = parser.parse_args()
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    print(json.dumps(asyncio.run(main(args)), indent=2))
