"""The demo's replication step: a replica bucket follows the galleries (``streamer replicate``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from streamer.replicate.worker import replicate_runner
from streamer.runtime.metrics import new_registry

if TYPE_CHECKING:
    from streamer.dev.demo import Demo

__all__ = ["show_replication"]


async def _until(done: Callable[[], Awaitable[bool]], timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await done():
            return True
        await asyncio.sleep(0.2)
    return False


async def show_replication(demo: Demo, step: int, skus: list[str]) -> None:
    c, s = demo.checks, demo.settings
    demo.step(step, "A replica bucket follows the galleries (streamer replicate)")
    bucket = f"demo-replica-{demo.run_id}"
    await asyncio.to_thread(demo.s3.create_bucket, Bucket=bucket)
    settings = s.replace(
        replica_bucket=bucket,
        replica_prefix="cdn",
        replica_group_id=f"streamer-demo-replicate-{demo.run_id}",
    )

    def replica() -> dict[str, str]:
        listed = demo.s3.list_objects_v2(Bucket=bucket, Prefix="cdn/").get("Contents", [])
        return {o["Key"][len("cdn") :]: o["ETag"].strip('"') for o in listed}

    async def galleries() -> dict[str, str]:
        rows = await demo._sql(
            "SELECT DISTINCT file_path, etag FROM gallery_images WHERE sku = ANY($1)", skus
        )
        return {r["file_path"]: r["etag"] for r in rows}

    async def follows() -> bool:
        if task.done():
            task.result()
        return await asyncio.to_thread(replica) == await galleries()

    registry = new_registry()
    worker = replicate_runner(settings, registry=registry, install_signal_handlers=False)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        synced = await _until(follows)
        copied = registry.get_sample_value("streamer_replica_copies_total", {"mode": "server_side"})
        c.check(
            synced,
            f"{copied or 0:.0f} images copied server-side to s3://{bucket}/cdn: "
            "exactly what the galleries hold",
        )
        target = skus[5]
        path = f"/{target[-2:]}/{target.lower()}-2.png"
        new_etag = demo.upload(target, 2, revision=2)
        demo.publish([demo.media_event(target, demo.images_of(target))])
        await demo.drain()
        changed = await _until(follows)
        after = registry.get_sample_value("streamer_replica_copies_total", {"mode": "server_side"})
        c.check(
            changed and replica().get(path) == new_etag and (after or 0) - (copied or 0) == 1,
            f"{path} replaced at the source: the replica copied that one image, nothing else",
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)
