"""The webhook forwarder's benchmark: deliveries/s against a local receiver, single and batched.

Publishes ``GalleryUpdated`` events to a fresh outcome topic, starts the verifying
receiver (``streamer.dev.receiver``) in its own process, so its CPU is not the
forwarder's, and drains the topic with one in-process forwarder per mode. Each row
says what it cost the forwarder: requests/s, events/s and CPU per request and event.
The receiver (Python's http.server, verifying every signature) is part of what is
measured: against a faster receiver the forwarder's CPU per request is the bound.
"""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr

from streamer.contract.codec import Codec
from streamer.dev.receiver import free_port
from streamer.forward.worker import forward_runner
from streamer.ops.schema import migrate_all
from streamer.ops.topics import create_topics
from streamer.runtime.database import connect
from streamer.runtime.metrics import new_registry
from streamer.runtime.publisher import Publisher
from streamer.runtime.runner import Runner
from streamer.settings import Settings

__all__ = ["ForwardResult", "run_forward_benchmark"]

_SECRET = "whsec_" + "YmVuY2gtb25seS1zZWNyZXQtbm90LWZvci11c2U="  # bench-only, local receiver


@dataclass
class ForwardResult:
    mode: str
    events: int
    requests: float
    seconds: float
    cpu_s: float

    def row(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "events": self.events,
            "requests": int(self.requests),
            "requests/s": round(self.requests / self.seconds, 1),
            "events/s": round(self.events / self.seconds, 1),
            "forwarder CPU ms/request": round(1000 * self.cpu_s / max(self.requests, 1), 3),
            "forwarder CPU ms/event": round(1000 * self.cpu_s / max(self.events, 1), 3),
        }


def _outcome(sku: str, n: int) -> dict[str, Any]:
    path = f"/{sku[-2:]}/{sku.lower()}-{n}.jpg"
    return {
        "event_id": str(uuid.uuid4()),
        "sku": sku,
        "version": n,
        "occurred_at": datetime.now(UTC),
        "deleted": False,
        "source_event_ids": [str(uuid.uuid4())],
        "request_ids": [],
        "images": [
            {
                "file_path": f"{path}-{k}",
                "etag": "0cc175b9c0f1b6a831c399e269772661",
                "size": 20480,
                "content_type": "image/jpeg",
                "label": None,
                "position": k,
                "disabled": False,
                "roles": ["image"] if k == 0 else [],
                "content_changed": True,
            }
            for k in range(5)
        ],
        "removed": [],
        "content_changed": [path],
    }


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _drain(
    settings: Settings, ends: dict[tuple[str, int], int], worker: Runner[Any, Any, Any]
) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        while True:
            if task.done():
                task.result()
                raise RuntimeError("the forwarder stopped by itself")
            async with connect(settings.database.dsn) as conn:
                rows = await conn.fetch(
                    "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = $1",
                    settings.forward.forward_group_id,
                )
            stored = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
            if all(stored.get(tp, -1) >= end for tp, end in ends.items()):
                return
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)


async def run_forward_benchmark(
    settings: Settings,
    *,
    n_events: int = 5000,
    batch_sizes: tuple[int, ...] = (1, 50),
    log: Callable[[str], None] = lambda line: None,
) -> list[ForwardResult]:
    port = free_port()
    env = {**os.environ, "STREAMER_WEBHOOK_SECRET": _SECRET}
    receiver = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited
        [sys.executable, "-m", "streamer.dev.receiver", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    results = []
    try:
        await migrate_all(settings.database.dsn)
        for size in batch_sizes:
            run = uuid.uuid4().hex[:6]
            s = settings.replace(
                outcome_topic=f"bench-{run}.catalog.gallery.updated.v1",
                product_topic=f"bench-{run}.catalog.product.v1",
                media_topic=f"bench-{run}.catalog.media.v1",
                dlq_topic=f"bench-{run}.catalog.gallery.dlq",
                forward_group_id=f"bench-forward-{run}",
                webhook_url=f"http://127.0.0.1:{port}/webhooks",
                webhook_secret=SecretStr(_SECRET),
                webhook_rate_per_s=0,
                webhook_batch_max_events=size,
                metrics_port=0,
            )
            create_topics(s)
            codec = Codec.for_registry(s.kafka.schema_registry_url)
            with Publisher(s.kafka) as publisher:
                for n in range(n_events):
                    sku = f"B-{n % 1000:04d}"
                    value = codec.encode_outcome(_outcome(sku, n), topic=s.topics.outcome_topic)
                    publisher.produce(s.topics.outcome_topic, value, key=sku.encode())
                publisher.flush()
                ends = dict(publisher.end_offsets)
            mode = "one event per request" if size == 1 else f"batches of up to {size}"
            log(f"forwarding {n_events} events, {mode}")
            worker = forward_runner(s, registry=new_registry(), install_signal_handlers=False)
            cpu0, t0 = _cpu_s(), time.perf_counter()
            await _drain(s, ends, worker)
            seconds, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
            requests = sum(
                worker.registry.get_sample_value(
                    "streamer_webhook_requests_total", {"result": result}
                )
                or 0.0
                for result in ("2xx", "3xx", "4xx", "429", "5xx", "timeout", "network")
            )
            results.append(ForwardResult(mode, n_events, requests, seconds, cpu))
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
    return results
