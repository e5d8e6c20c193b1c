"""The demo's HTTP step: the catalog posted through ``streamer serve`` and followed to complete.

The API runs in the demo's own process (uvicorn on a free port), beside its worker;
the step checks the acknowledgment, the bulk's counts and the one ``ImportCompleted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
import uvicorn
from pydantic import SecretStr
from rich.table import Table

from streamer.api.app import create_app
from streamer.contract.codec import Codec
from streamer.dev.stack import free_port
from streamer.gallery.export import load_gallery
from streamer.runtime.readback import read_messages
from streamer.settings import Settings

if TYPE_CHECKING:
    from streamer.dev.demo import Demo

__all__ = ["api_step"]


@contextlib.asynccontextmanager
async def _serving(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, gallery=load_gallery)
    config = uvicorn.Config(
        app,
        host=settings.api.api_host,
        port=settings.api.api_port,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("streamer serve stopped while starting")
            await asyncio.sleep(0.05)
        token = settings.api.full_tokens()[0]
        async with httpx.AsyncClient(
            base_url=f"http://{settings.api.api_host}:{settings.api.api_port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        ) as http:
            yield http
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=30)


async def api_step(demo: Demo, n: int, skus: list[str]) -> None:
    c = demo.checks
    demo.step(n, "Post the catalog through the HTTP API and follow the bulk to complete")
    new_sku = f"DEMO-{demo.run_id}-{len(skus) + 1:02d}"
    for i in range(1, 4):
        demo.upload(new_sku, i)
    # A short delivery bound: the relay's first leader waits it out (+1 s) before publishing.
    settings = demo.settings.replace(
        api_host="127.0.0.1",
        api_port=free_port(),
        api_tokens=SecretStr(secrets.token_urlsafe(24)),
        completion_delivery_timeout_s=2.0,
        completion_poll_interval_s=0.2,
    )
    catalog = [*skus, new_sku]
    payload = {
        "request": {
            "request_id": f"demo-{demo.run_id}-catalog",
            "items": [{"sku": sku, "images": demo.images_of(sku)} for sku in catalog],
        }
    }
    async with _serving(settings) as http:
        started = time.monotonic()
        reply = await http.post("/v1/galleries/bulk", json=payload)
        body = reply.json()
        c.check(
            reply.status_code == 202
            and all(i["status"] == "accepted" for i in body["request_items"]),
            f"POST /v1/galleries/bulk: {reply.status_code}, {len(body['request_items'])} items "
            f"accepted, bulk {body.get('bulk_uuid')}",
        )
        bulk_uuid = body["bulk_uuid"]
        status: dict[str, Any] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = (await http.get(f"/v1/bulks/{bulk_uuid}")).json()
            if status["complete"]:
                break
            await asyncio.sleep(0.2)
        took = time.monotonic() - started
        table = Table("outcome", "items", title=f"bulk {bulk_uuid[:8]}… (GET /v1/bulks/…)")
        for outcome, count in status.get("counts", {}).items():
            table.add_row(outcome, str(count))
        demo.console.print(table)
        counts = status.get("counts", {})
        c.check(
            status.get("complete") is True and counts.get("pending") == 0,
            f"the bulk reached complete in {took:.1f}s: {counts.get('written')} written "
            f"(the new SKU, a label put back), {counts.get('noop')} no-ops",
        )
        c.check(
            counts.get("written") == 2 and counts.get("noop") == len(catalog) - 2,
            "unchanged galleries cost no write, also through the API",
        )
        record: dict[str, Any] | None = None
        deadline = time.monotonic() + 30
        loop = asyncio.get_running_loop()
        topic = settings.topics.import_completed_topic
        while record is None and time.monotonic() < deadline:
            found = await loop.run_in_executor(
                None, lambda: list(read_messages(settings.kafka, topic, idle_s=0.3))
            )
            records = [Codec().decode(m.value()).data for m in found]
            if records:
                c.check(len(records) == 1, f"{len(records)} ImportCompleted on {topic}")
                record = records[0]
            else:
                await asyncio.sleep(0.3)
        c.check(
            record is not None
            and str(record["bulk_uuid"]) == bulk_uuid
            and record["counts"]["written"] == counts.get("written"),
            "ImportCompleted carries the bulk and its counts",
        )
