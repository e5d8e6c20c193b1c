"""``make bench``: streamer's phases, the competent plain baseline's (``benchmarks/plain.py``)
and the quix-streams peer's (``benchmarks/peers/quix_gallery.py``) in one run, on the same
stack and data, beside the same ceilings.

    python -m benchmarks.suite [--skus N] [--shape shared|sharded] [--json-out FILE]

``plain_first_sync`` reads the first sync's messages into the baseline's own table (empty),
``plain_noop_resync`` the no-op re-sync's into it afterwards: the same messages streamer's
``first_sync`` and ``noop_resync`` read. Each phase's clock starts once its clients are
made and its partitions assigned, as for every phase.

``quixstreams_first_sync`` and ``quixstreams_noop_resync`` read the same messages through the
peer, run in its own virtual environment (``QUIX_PYTHON``, ``.venv-quix`` by default, which
``make bench`` builds) as a subprocess that reports its figures as JSON. A quix
``Application`` reads from its group's committed offsets, so each runs right after the
streamer phase that publishes its messages, before a later phase publishes more (the default
order; ``--phase`` must keep it), and the second resumes where the first committed. The JSON is ``streamer bench
--json``'s object (``ceilings``, ``phases``) with the run's workload and the machine's load
beside it (``run``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
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
from streamer.runtime.database import connect
from streamer.settings import Settings, load_settings


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

ROOT = Path(__file__).resolve().parent.parent
QUIX_PEER = ROOT / "benchmarks" / "peers" / "quix_gallery.py"
# What quix-streams promises on a crash, against streamer's exactly-once effect (the phase's
# JSON carries it: the peer's figures are not those of the same guarantee).
QUIX_GUARANTEE = (
    "at-least-once: offsets are committed after the sink's flush, so a crash in between "
    "writes that checkpoint's batches again; processing_guarantee='exactly-once' covers "
    "Kafka outputs, not a PostgreSQL sink (streamer: offsets in the gallery's transaction)"
)


def peer_env(settings: Settings) -> dict[str, str]:
    """The peer's connections, secrets included, in its environment (never its argv)."""
    s3 = settings.s3
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMER_", "AWS_"))}
    env["PEER_DATABASE_URL"] = settings.database.dsn
    env["PEER_KAFKA_CONFIG"] = json.dumps(
        {"bootstrap.servers": settings.kafka.kafka_bootstrap, **settings.kafka.properties()}
    )
    env["AWS_DEFAULT_REGION"] = s3.s3_region
    if s3.s3_endpoint_url:
        env["AWS_ENDPOINT_URL_S3"] = s3.s3_endpoint_url
    if s3.s3_access_key_id and s3.s3_secret_access_key is not None:
        env["AWS_ACCESS_KEY_ID"] = s3.s3_access_key_id
        env["AWS_SECRET_ACCESS_KEY"] = s3.s3_secret_access_key.get_secret_value()
    return env


def _peer_python() -> Path:
    python = Path(os.environ.get("QUIX_PYTHON", ROOT / ".venv-quix" / "bin" / "python"))
    if not python.exists():
        raise FileNotFoundError(f"{python}: the quix-streams peer's venv; `make bench` builds it")
    return python


def _offsets(offsets: dict[tuple[str, int], int]) -> str:
    return json.dumps([[t, p, o] for (t, p), o in sorted(offsets.items())])


def peer_command(
    s: Settings,
    name: str,
    starts: dict[tuple[str, int], int],
    ends: dict[tuple[str, int], int],
    table: str,
    state_dir: str,
) -> list[str]:
    """The peer's command line: what it reads and writes, no connection secret (those go in
    its environment, ``peer_env``: a command line is visible to every user of the machine)."""
    return [
        str(_peer_python()),
        str(QUIX_PEER),
        f"--name={name}",
        f"--group={s.gallery.group_id}-quixstreams",
        f"--starts={_offsets(starts)}",
        f"--ends={_offsets(ends)}",
        f"--schemas={ROOT / 'schemas'}",
        f"--table={table}",
        f"--bucket={s.s3.s3_bucket}",
        f"--prefix={s.s3.s3_prefix}",
        f"--fetch-wait-max-ms={s.kafka.fetch_wait_max_ms}",
        f"--state-dir={state_dir}",
    ]


async def _quix(
    ctx: BenchContext,
    name: str,
    starts: dict[tuple[str, int], int],
    ends: dict[tuple[str, int], int],
    after: str,
) -> Phase:
    if list(ctx.published)[-1] != after:
        raise ValueError(
            f"{name} reads from its group's offsets to {after}'s ends: run it right after "
            f"{after}, before a later phase publishes (published so far: {list(ctx.published)})"
        )
    table = f"quixstreams_gallery_{ctx.run}"
    await create_table(ctx.settings, table)
    s = ctx.settings
    with tempfile.TemporaryDirectory(prefix="quix-state-") as state:
        command = peer_command(s, name, starts, ends, table, state)
        done = await asyncio.to_thread(
            subprocess.run, command, env=peer_env(s), stdout=subprocess.PIPE, text=True
        )
    if done.returncode != 0:
        raise RuntimeError(f"{name}: the quix-streams peer exited with {done.returncode}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if out["past_end"]:
        ctx.log(f"{name}: {out['past_end']:,} messages past the phase's ends read (not written)")
    ctx.log(f"{name}: on a crash, {QUIX_GUARANTEE}")
    if name == "quixstreams_first_sync":
        await _same_gallery(ctx, name, table)
    else:
        await drop_table(ctx.settings, table)
    phase = Phase.of_heads(
        name, SimpleNamespace(**out), out["seconds"], out["cpu_s"], out["peak_rss_mb"]
    )
    phase.guarantee = QUIX_GUARANTEE
    return phase


async def _same_gallery(ctx: BenchContext, name: str, table: str) -> None:
    """The peer wrote what streamer's ``first_sync`` wrote, image row for image row (when that
    phase ran): the same job, not a faster different one."""
    async with connect(ctx.settings.database.dsn) as conn:
        row = await conn.fetchrow(
            f"SELECT count(*) AS rows, count(g.sku) AS found, count(*) FILTER (WHERE"
            f" (q.etag, q.size_bytes, q.label, q.position, q.disabled, q.roles) IS DISTINCT FROM"
            f" (g.etag, g.size_bytes, g.label, g.position, g.disabled, g.roles)) AS differ"
            f" FROM {table} q LEFT JOIN gallery_images g USING (sku, file_path)"
        )
    if not row["found"]:
        ctx.log(f"{name}: {row['rows']:,} rows; first_sync did not run, nothing to compare")
    elif row["differ"]:
        raise ValueError(
            f"{name}: {row['differ']:,} of {row['rows']:,} rows differ from streamer's"
        )
    else:
        ctx.log(f"{name}: its {row['rows']:,} rows are those streamer's first_sync wrote")


async def quixstreams_first_sync(ctx: BenchContext) -> Phase:
    ends = ctx.published["first_sync"]
    return await _quix(ctx, "quixstreams_first_sync", dict.fromkeys(ends, 0), ends, "first_sync")


async def quixstreams_noop_resync(ctx: BenchContext) -> Phase:
    """The no-op re-sync's messages, from where quixstreams_first_sync's group committed."""
    if "noop_resync" not in ctx.published:
        raise ValueError("quixstreams_noop_resync reads noop_resync's messages: run that first")
    starts, ends = ctx.published["first_sync"], ctx.published["noop_resync"]
    return await _quix(ctx, "quixstreams_noop_resync", dict(starts), ends, "noop_resync")


QUIX: dict[str, Callable[[BenchContext], Awaitable[Phase]]] = {
    "quixstreams_first_sync": quixstreams_first_sync,
    "quixstreams_noop_resync": quixstreams_noop_resync,
}


def default_phases() -> list[str]:
    """Every phase, each quix phase right after the streamer phase that publishes its
    messages (it reads to the topic's end as its group left it)."""
    order: list[str] = []
    for name in PHASES:
        order.append(name)
        if name == "first_sync":
            order.append("quixstreams_first_sync")
        elif name == "noop_resync":
            order.append("quixstreams_noop_resync")
    return [*order, *PLAIN]


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
        phases=args.phase or default_phases(),
        log=log,
        shape=args.shape,
        extra_phases={**PLAIN, **QUIX},
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
