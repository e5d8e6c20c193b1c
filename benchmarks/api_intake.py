"""Intake throughput of one `streamer serve` process, and the delay to ImportCompleted.

    .venv/bin/python -m benchmarks.api_intake [--items 10000] [--bulks 5]

Starts (or reuses) the embedded stack, runs `streamer serve` as its own process, posts
bulks of N one-image items with no consumer running (so the figure is the intake's own:
parse, validate, encode, track in PostgreSQL, produce, wait for every acknowledgment),
and reads the server's CPU from /proc. Then one in-process gallery worker drains them
and the relay's histogram gives the delay from each bulk's last processed item to its
ImportCompleted acknowledged by the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from pydantic import SecretStr

from streamer.dev.stack import DevStack, free_port
from streamer.gallery.worker import gallery_runner
from streamer.ops.schema import migrate_all
from streamer.ops.topics import create_topics
from streamer.settings import Settings, load_settings
from streamer.storage.clients import make_s3_client
from streamer.storage.keys import s3_key


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_env(settings: Settings, home: Path) -> dict[str, str]:
    """The environment of a `streamer serve` process run with exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    every = {name: value for kind in Settings.kinds() for name, value in settings.section(kind)}
    for name, value in every.items():
        if value is not None and not isinstance(value, dict):
            raw = value.get_secret_value() if isinstance(value, SecretStr) else value
            env[f"STREAMER_{name.upper()}"] = str(raw)
    env["STREAMER_HOME"] = str(home)
    return env


def main(items: int, bulks: int) -> None:
    home = Path(tempfile.mkdtemp(prefix="streamer-bench-api-"))
    dev = DevStack(home)
    dev.up()
    run = uuid.uuid4().hex[:6]
    token = secrets.token_urlsafe(24)
    port = free_port()
    settings = load_settings(env_file=dev.env_file).replace(
        product_topic=f"bench-{run}.product",
        media_topic=f"bench-{run}.media",
        outcome_topic=f"bench-{run}.outcome",
        import_completed_topic=f"bench-{run}.completed",
        dlq_topic=f"bench-{run}.dlq",
        group_id=f"bench-{run}",
        s3_prefix=f"bench-{run}",
        topic_partitions=4,
        etag_source="list",
        metrics_port=0,
        api_tokens=SecretStr(token),
        api_port=port,
        completion_delivery_timeout_s=2.0,
        completion_poll_interval_s=0.2,
    )
    create_topics(settings)
    asyncio.run(migrate_all(settings.database.dsn))
    s3 = make_s3_client(settings.s3)
    for n in range(20):
        s3.put_object(
            Bucket=settings.s3.s3_bucket,
            Key=s3_key(settings.s3.s3_prefix, f"/b/{n}.jpg"),
            Body=b"x",
        )
    server = subprocess.Popen(
        [sys.executable, "-m", "streamer", "serve"], env=server_env(settings, home)
    )
    try:
        asyncio.run(measure(settings, server, f"http://127.0.0.1:{port}", token, items, bulks))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        dev.down()


async def measure(
    settings: Settings,
    server: subprocess.Popen[bytes],
    url: str,
    token: str,
    items: int,
    bulks: int,
) -> None:
    if True:
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=300
        ) as http:
            while True:
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            rates, cpu_ms = [], []
            for b in range(bulks):
                payload = {
                    "request": {
                        "request_id": f"bench-{b}",
                        "items": [
                            {"sku": f"B{b}-{i:06d}", "images": [{"file_path": f"b/{i % 20}.jpg"}]}
                            for i in range(items)
                        ],
                    }
                }
                cpu0, t0 = cpu_s(server.pid), time.perf_counter()
                reply = await http.post("/v1/galleries/bulk", json=payload)
                wall, cpu = time.perf_counter() - t0, cpu_s(server.pid) - cpu0
                assert reply.status_code == 202, reply.text[:300]
                rates.append(items / wall)
                cpu_ms.append(cpu * 1000 / items)
                print(
                    f"bulk {b}: {items} items in {wall:.2f}s = {items / wall:,.0f} items/s, "
                    f"server CPU {cpu * 1000 / items:.3f} ms/item"
                )
            print(
                f"intake: median {statistics.median(rates):,.0f} items/s "
                f"(min {min(rates):,.0f}, max {max(rates):,.0f}); "
                f"server CPU median {statistics.median(cpu_ms):.3f} ms/item"
            )
            stop = asyncio.Event()
            worker = gallery_runner(settings, install_signal_handlers=False)
            task = asyncio.create_task(worker.run(stop))
            started = time.perf_counter()
            while True:
                found = (await http.get("/v1/bulks", params={"limit": bulks})).json()["bulks"]
                metrics = (await http.get("/metrics")).text
                done = [
                    ln
                    for ln in metrics.splitlines()
                    if ln.startswith("streamer_imports_completed_total ")
                ]
                if (
                    done
                    and float(done[0].split()[1]) >= bulks
                    and all(b["complete"] for b in found)
                ):
                    break
                await asyncio.sleep(0.5)
            print(f"drained and completed {bulks} bulks in {time.perf_counter() - started:.1f}s")
            delay = {
                ln.split()[0]: float(ln.split()[1])
                for ln in metrics.splitlines()
                if ln.startswith("streamer_import_completion_delay_seconds_")
            }
            count = delay["streamer_import_completion_delay_seconds_count"]
            print(
                f"last item processed -> ImportCompleted acknowledged: mean "
                f"{delay['streamer_import_completion_delay_seconds_sum'] / count * 1000:.0f} ms "
                f"over {count:.0f} bulks"
            )
            stop.set()
            await task


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--bulks", type=int, default=5)
    args = parser.parse_args()
    main(args.items, args.bulks)
