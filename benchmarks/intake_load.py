"""The intake's cost per request, under load from a compiled client, beside a minimal baseline.

    .venv/bin/python -m benchmarks.intake_load [--seconds 20] [--connections 50]
        [--broker tansu|kafka] [--rounds 1] [--json-out FILE] [--pool-size N]
        [--no-idempotency] [--profile FILE]

On the dev stack (started if it is not running; left running, as `streamer dev up` would),
one `streamer serve` process and one minimal baseline process (benchmarks/intake_baseline:
FastAPI plus a confluent-kafka producer awaiting acks) take single-item bulks from `wrk`
(Debian package wrk; one thread, so the client eats as little of the server's cores as
it can) on N connections for S seconds each, one after the other, after a warm-up that
is not counted. For each: requests/s, p50/p99 latency, status counts, the server
process's CPU per request (utime+stime from /proc, before and after, every thread of the
process: uvicorn, the executor, librdkafka's), the client's CPU, and how busy the machine
was (/proc/stat, both cores, everything running) with its load average. A third run
sends `streamer serve` the same load with an `Idempotency-Key` on every request (two more
PostgreSQL statements each). ``--profile FILE``: py-spy's collapsed stacks of `streamer
serve` during its run (``pip install py-spy``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from benchmarks.api_intake import cpu_s, server_env
from streamer.dev.bench import own_topics
from streamer.dev.stack import DevStack, free_port
from streamer.ops.schema import migrate_all
from streamer.ops.topics import create_topics
from streamer.settings import Settings, load_settings

# Each request is a single-item bulk with its own SKU (thread id and a counter); the
# statuses are counted per thread and added up in done().
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(token)s"
local threads = {}
local n = 0
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end
function init(args)
  statuses = {}
end
function request()
  n = n + 1
  local body = '{"request": {"request_id": "load", "items": [{"sku": "L-' .. id .. '-' .. n
    .. '", "images": [{"file_path": "b/1.jpg"}]}]}}'
  local headers = {}
  for k, v in pairs(wrk.headers) do headers[k] = v end
  if %(idempotency)s then headers["Idempotency-Key"] = "%(run)s-" .. id .. "-" .. n end
  return wrk.format(nil, nil, headers, body)
end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  local counts = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do
      counts[tostring(k)] = (counts[tostring(k)] or 0) + v
    end
  end
  local parts = {}
  for k, v in pairs(counts) do table.insert(parts, string.format('"%%s": %%d', k, v)) end
  io.write(string.format(
    'JSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, "max_us": %%d, '
    .. '"socket_errors": %%d, "statuses": {%%s}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout, table.concat(parts, ", ")))
end
"""


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of every core since boot."""
    fields = [int(f) for f in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def wrk(
    url: str, token: str, seconds: int, connections: int, idempotency: bool = False
) -> dict[str, Any]:
    """One wrk run; ``idempotency``: every request with its own ``Idempotency-Key``."""
    with tempfile.TemporaryDirectory(prefix="streamer-wrk-") as tmp:
        script = Path(tmp) / "intake.lua"
        script.write_text(
            WRK_SCRIPT
            % {
                "token": token,
                "idempotency": "true" if idempotency else "false",
                "run": uuid.uuid4().hex[:8],
            }
        )
        ran = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "--timeout",
                "30s",
                "-s",
                str(script),
                f"{url}/v1/galleries/bulk",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    line = next(ln for ln in ran.stdout.splitlines() if ln.startswith("JSON "))
    found: dict[str, Any] = json.loads(line[5:])
    return found


def measure(
    name: str,
    pid: int,
    url: str,
    token: str,
    seconds: int,
    connections: int,
    profile: Path | None = None,
    idempotency: bool = False,
) -> dict[str, Any]:
    spy = None
    if profile is not None:  # py-spy (pip install py-spy): collapsed stacks, CPU only
        spy = subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(seconds),
                "--rate",
                "200",
                "--format",
                "raw",
                "--nonblocking",
                "-o",
                str(profile),
            ],
            stdout=subprocess.DEVNULL,
        )
    client0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, total0 = machine_ticks()
    cpu0 = cpu_s(pid)
    run = wrk(url, token, seconds, connections, idempotency)
    cpu = cpu_s(pid) - cpu0
    busy1, total1 = machine_ticks()
    client1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if spy is not None:
        spy.wait(60)
    n = max(run["requests"], 1)
    wall = run["duration_us"] / 1e6
    client = (client1.ru_utime + client1.ru_stime) - (client0.ru_utime + client0.ru_stime)
    return {
        "server": name,
        "requests_per_s": round(run["requests"] / wall, 1),
        "p50_ms": run["p50_us"] / 1000,
        "p99_ms": run["p99_us"] / 1000,
        "statuses": run["statuses"],
        "socket_errors": run["socket_errors"],
        "server_cpu_us_per_request": round(cpu * 1e6 / n),
        "server_cores_busy": round(cpu / wall, 2),
        "client_cpu_us_per_request": round(client * 1e6 / n),
        "machine_busy": round((busy1 - busy0) / max(total1 - total0, 1), 2),
        "loadavg_1m": float(Path("/proc/loadavg").read_text().split()[0]),
        "requests": run["requests"],
        "seconds": round(wall, 1),
    }


async def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the server at {url} exited with {process.returncode}")
            try:
                if (await http.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the server at {url} did not answer within {timeout_s:.0f}s")
            await asyncio.sleep(0.2)


def prepared(dev: DevStack, token: str, pool_size: int | None) -> Settings:
    run = uuid.uuid4().hex[:6]
    settings = load_settings(env_file=dev.env_file)
    if pool_size is not None:
        settings = settings.replace(database_pool_size=pool_size)
    settings = settings.replace(
        **own_topics("intake", run),
        s3_prefix=f"intake-{run}",
        topic_partitions=4,
        metrics_port=0,
        api_tokens=SecretStr(token),
        api_port=free_port(),
    )
    create_topics(settings)
    asyncio.run(migrate_all(settings.database.dsn))
    return settings


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| server | req/s | p50 ms | p99 ms | server CPU µs/req | client CPU µs/req "
        "| statuses | machine busy | load 1m |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['server']} | {r['requests_per_s']:,.0f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['server_cpu_us_per_request']:,} | "
            f"{r['client_cpu_us_per_request']:,} | {r['statuses']} | "
            f"{r['machine_busy']:.0%} | {r['loadavg_1m']:.2f} |"
        )
    return "\n".join(lines)


def main(
    seconds: int,
    connections: int,
    broker: str | None,
    rounds: int,
    json_out: Path | None,
    profile: Path | None,
    pool_size: int | None,
    idempotency: bool,
) -> None:
    home = Path(os.environ.get("STREAMER_HOME", ".streamer")).resolve()
    dev = DevStack(home, broker="kafka" if broker == "kafka" else "tansu" if broker else None)
    state = dev.up()
    token = secrets.token_urlsafe(24)
    settings = prepared(dev, token, pool_size)
    streamer_url = f"http://127.0.0.1:{settings.api.api_port}"
    baseline_port = free_port()
    baseline_url = f"http://127.0.0.1:{baseline_port}"
    started: list[subprocess.Popen[bytes]] = []
    try:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamer", "serve"], env=server_env(settings, home)
        )
        started.append(server)
        baseline = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.intake_baseline",
                "--port",
                str(baseline_port),
                "--bootstrap",
                settings.kafka.kafka_bootstrap,
                "--topic",
                settings.topics.media_topic,
            ]
        )
        started.append(baseline)
        asyncio.run(wait_healthy(streamer_url, server))
        asyncio.run(wait_healthy(baseline_url, baseline))
        servers = [
            ("streamer serve", server.pid, streamer_url, False),
            ("baseline", baseline.pid, baseline_url, False),
        ]
        if idempotency:
            servers.append(("streamer serve, Idempotency-Key", server.pid, streamer_url, True))
        for _, _, url, _ in servers[:2]:  # warm-up, not counted
            wrk(url, token, min(5, seconds), connections)
        rows = []
        for _ in range(rounds):
            for name, pid, url, keyed in servers:
                spied = profile if profile is not None and name == "streamer serve" else None
                rows.append(measure(name, pid, url, token, seconds, connections, spied, keyed))
                print(json.dumps(rows[-1]), flush=True)
        print(
            f"\nbroker {state.broker}, {connections} connections, {seconds} s each, "
            f"single-item bulks, {os.cpu_count()} cores, streamer serve's database pool "
            f"{settings.database.database_pool_size}\n"
        )
        print(table(rows))
        if json_out is not None:
            json_out.write_text(
                json.dumps({"broker": state.broker, "connections": connections, "runs": rows})
            )
    finally:
        for process in started:
            process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--broker", choices=["tansu", "kafka"], default=None)
    parser.add_argument("--rounds", type=int, default=1, help="streamer, then baseline, N times")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy's collapsed stacks of streamer serve"
    )
    parser.add_argument(
        "--pool-size", type=int, default=None, help="streamer serve's STREAMER_DATABASE_POOL_SIZE"
    )
    parser.add_argument(
        "--no-idempotency",
        action="store_true",
        help="leave out the run with an Idempotency-Key on every request",
    )
    args = parser.parse_args()
    main(
        args.seconds,
        args.connections,
        args.broker,
        args.rounds,
        args.json_out,
        args.profile,
        args.pool_size,
        not args.no_idempotency,
    )
