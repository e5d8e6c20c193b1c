"""``make bench``: streamer's phases and the competent plain baseline's (``benchmarks/plain.py``)
in one run, on the same stack and data, beside the same ceilings.

    python -m benchmarks.suite [--skus N] [--shape shared|sharded] [--json-out FILE]

``plain_first_sync`` reads the first sync's messages into the baseline's own table (empty),
``plain_noop_resync`` the no-op re-sync's into it afterwards: the same messages streamer's
``first_sync`` and ``noop_resync`` read. Each phase's clock starts once its clients are
made and its partitions assigned, as for every phase. The JSON is ``streamer bench
--json``'s object (``ceilings``, ``phases``) with the run's workload and the machine's load
beside it (``run``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks.plain import create_table, drop_table, run_plain
from benchmarks.ranges import format_ranges, merge, runs_apart
from streamer.dev.bench import (
    PHASES,
    BenchContext,
    Phase,
    Progress,
    _cpu_s,
    _machine_busy,
    commit_latencies,
    format_table,
    peak_rss,
    percentiles_ms,
    run_benchmark,
)
from streamer.settings import load_settings


async def _plain(
    ctx: BenchContext,
    name: str,
    starts: dict[tuple[str, int], int],
    ends: dict[tuple[str, int], int],
) -> Phase:
    table = f"plain_gallery_{ctx.run}"
    await create_table(ctx.settings, table)
    clock: list[float] = []

    def ready() -> None:
        clock[:] = [_cpu_s(), time.monotonic()]

    with peak_rss() as peak:
        result = await run_plain(
            ctx.settings,
            table,
            starts,
            ends,
            ready=ready,
            progress=Progress(name, ctx.n_skus, ctx.log).advance,
        )
        seconds, cpu = time.monotonic() - clock[1], _cpu_s() - clock[0]
    if name == "plain_noop_resync":
        await drop_table(ctx.settings, table)
    phase = Phase.of_heads(name, result, seconds, cpu, peak[0])
    media = ctx.settings.topics.media_topic
    latencies = await asyncio.to_thread(commit_latencies, ctx.settings, result.commits, media)
    phase.latency_p50_ms, phase.latency_p99_ms = percentiles_ms(latencies)
    return phase


async def plain_first_sync(ctx: BenchContext) -> Phase:
    ends = ctx.published["first_sync"]
    return await _plain(ctx, "plain_first_sync", dict.fromkeys(ends, 0), ends)


async def plain_noop_resync(ctx: BenchContext) -> Phase:
    """The no-op re-sync's messages: they follow the first sync's (``noop_resync`` ran)."""
    if "noop_resync" not in ctx.published:
        raise ValueError("plain_noop_resync reads noop_resync's messages: run that phase first")
    starts, ends = ctx.published["first_sync"], ctx.published["noop_resync"]
    return await _plain(ctx, "plain_noop_resync", dict(starts), ends)


PLAIN: dict[str, Callable[[BenchContext], Awaitable[Phase]]] = {
    "plain_first_sync": plain_first_sync,
    "plain_noop_resync": plain_noop_resync,
}


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    busy0, load0 = _machine_busy(), os.getloadavg()
    result = await run_benchmark(
        load_settings(),
        n_skus=args.skus,
        images_per_sku=args.images,
        n_objects=args.objects or args.skus * args.images,
        naive_events=args.naive_events,
        phases=args.phase or [*PHASES, *PLAIN],
        log=log,
        shape=args.shape,
        extra_phases=PLAIN,
    )
    busy1, load1 = _machine_busy(), os.getloadavg()
    total = busy1[1] - busy0[1]
    log(format_table(result))
    return {
        **result.as_json(),
        "run": {
            "skus": args.skus,
            "images_per_sku": args.images,
            "shape": args.shape,
            "load_average_1m": [round(load0[0], 2), round(load1[0], 2)],
            "machine_busy_pct": round(100 * (busy1[0] - busy0[0]) / total, 1) if total else None,
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skus", type=int, default=5000)
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument(
        "--objects", type=int, default=0, help="distinct objects (default: one per image)"
    )
    parser.add_argument("--shape", choices=["shared", "sharded"], default="shared")
    parser.add_argument("--naive-events", type=int, default=1000)
    parser.add_argument("--phase", action="append", help="only these phases (repeatable)")
    parser.add_argument("--json-out", help="write the JSON object here")
    parser.add_argument("--runs", type=int, default=1, help="runs, merged into min-max ranges")
    args = parser.parse_args()
    if args.runs > 1:
        merged = merge(runs_apart("benchmarks.suite", args.runs, sys.argv[1:], log))
        log(format_ranges(merged))
    else:
        merged = asyncio.run(main(args))
    out = json.dumps(merged, indent=2)
    if args.json_out:
        Path(args.json_out).write_text(out + "\n")
    print(out)
