"""The catalog-scale run: a million SKUs through `streamer loadgen`, `publish` and `consume`.

    make bench-1m                       # on the embedded stack (`streamer dev up`)
    .venv/bin/python benchmarks/million.py --skus 1000000 --objects 10000

What the seeds' import tool planned ("test with 1M products"), with streamer's own
commands, on fresh topics and a fresh consumer group:

1. `streamer loadgen` writes the catalog as JSON lines (5 images per SKU over a pool of
   objects small enough for moto to hold) and uploads the pool;
2. `streamer publish` sends it, in files of --chunk lines (each validated whole);
3. one `streamer consume` worker drains it, then (--resync) the same catalog again,
   newer: a no-op re-sync.

While the worker runs, every --every-s seconds a line shows events consumed, the
rate over the last interval and the worker's resident memory (VmRSS), so a reader sees
whether memory grows with the events consumed. The summary gives wall time, events/s
and the worker's peak RSS (VmHWM) per pass.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg

from streamer.settings import load_settings

BIN = Path(sys.executable).parent


def streamer(*args: str, env: dict[str, str], stdout: int | None = None) -> None:
    subprocess.run([str(BIN / "streamer"), *args], env=env, check=True, stdout=stdout)


def status(pid: int, field: str) -> float:
    """A /proc/PID/status size (VmRSS, VmHWM) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


async def consumed(dsn: str, group: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        value = await conn.fetchval(
            "SELECT coalesce(sum(greatest(next_offset, 0)), 0) FROM consumer_offsets "
            "WHERE group_id = $1",
            group,
        )
        return int(value)
    finally:
        await conn.close()


def publish(catalog: Path, chunk: int, env: dict[str, str]) -> float:
    started = time.monotonic()
    lines: list[str] = []
    sent = 0

    def flush() -> None:
        nonlocal sent
        part = catalog.with_suffix(".part.jsonl")
        part.write_text("".join(lines))
        streamer("publish", str(part), "--json", env=env, stdout=subprocess.DEVNULL)
        sent += len(lines)
        lines.clear()
        rate = sent / (time.monotonic() - started)
        print(f"  published {sent:,} events ({rate:,.0f}/s)", flush=True)

    with catalog.open() as source:
        for line in source:
            lines.append(line)
            if len(lines) >= chunk:
                flush()
    if lines:
        flush()
    return time.monotonic() - started


def drain(
    target: int, dsn: str, group: str, env: dict[str, str], every_s: float
) -> dict[str, float]:
    """Run one worker until the group's stored offsets reach ``target``; report as it goes."""
    worker = subprocess.Popen(
        [str(BIN / "streamer"), "consume"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started = time.monotonic()
    first = asyncio.run(consumed(dsn, group))
    last_t, last_n, peak = started, first, 0.0
    print(f"  {'s':>7} {'consumed':>10} {'events/s':>9} {'RSS MB':>7}", flush=True)
    try:
        while True:
            time.sleep(every_s)
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited with {worker.returncode}")
            n = asyncio.run(consumed(dsn, group))
            now = time.monotonic()
            rss = status(worker.pid, "VmRSS")
            peak = max(peak, status(worker.pid, "VmHWM"))
            rate = (n - last_n) / (now - last_t)
            print(f"  {now - started:>7.0f} {n - first:>10,} {rate:>9,.0f} {rss:>7.0f}", flush=True)
            last_t, last_n = now, n
            if n >= target:
                break
        wall = time.monotonic() - started
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    return {"wall_s": wall, "events": last_n - first, "peak_rss_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skus", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=50_000, help="lines per publish call")
    parser.add_argument("--every-s", type=float, default=10.0)
    parser.add_argument("--resync", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/streamer-1m"))
    args = parser.parse_args()

    run = uuid.uuid4().hex[:6]
    env = {
        **os.environ,
        "STREAMER_PRODUCT_TOPIC": f"m1-{run}.catalog.product.v1",
        "STREAMER_MEDIA_TOPIC": f"m1-{run}.catalog.media.v1",
        "STREAMER_OUTCOME_TOPIC": f"m1-{run}.catalog.gallery.updated.v1",
        "STREAMER_DLQ_TOPIC": f"m1-{run}.catalog.gallery.dlq",
        "STREAMER_GROUP_ID": f"streamer-1m-{run}",
        "STREAMER_METRICS_PORT": "0",
        "STREAMER_LOG_LEVEL": "WARNING",
    }
    os.environ.update(env)
    settings = load_settings()
    dsn = settings.database.dsn
    group = env["STREAMER_GROUP_ID"]
    args.workdir.mkdir(parents=True, exist_ok=True)
    catalog = args.workdir / "catalog.jsonl"
    print(
        f"{args.skus:,} SKUs x {args.images} images over {args.objects:,} objects, "
        f"ETag source {settings.gallery.etag_source}, run {run}",
        flush=True,
    )
    streamer("topics", "create", env=env, stdout=subprocess.DEVNULL)
    streamer("db", "migrate", env=env, stdout=subprocess.DEVNULL)
    results: dict[str, dict[str, float]] = {}
    passes = ["first sync", "no-op re-sync"] if args.resync else ["first sync"]
    for number, name in enumerate(passes, start=1):
        started = time.monotonic()
        loadgen = ["loadgen", str(catalog), "--skus", str(args.skus), "--images", str(args.images)]
        loadgen += ["--objects", str(args.objects), "--prefix", f"M{run}"]
        streamer(*loadgen, *(["--upload"] if number == 1 else []), env=env)
        print(f"{name}: loadgen {time.monotonic() - started:.0f}s", flush=True)
        publish_s = publish(catalog, args.chunk, env)
        print(f"{name}: published in {publish_s:.0f}s; consuming ...", flush=True)
        results[name] = drain(args.skus * number, dsn, group, env, args.every_s)
        r = results[name]
        print(
            f"{name}: {r['events']:,.0f} events in {r['wall_s']:.0f}s = "
            f"{r['events'] / r['wall_s']:,.0f} events/s, worker peak RSS {r['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    catalog.unlink(missing_ok=True)
    catalog.with_suffix(".part.jsonl").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
