"""The demo's webhook step: the gallery changes so far, delivered to a local receiver that
verifies every signature with the standardwebhooks package."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from typing import TYPE_CHECKING

from pydantic import SecretStr
from rich.table import Table

from streamer.dev.receiver import Receiver
from streamer.forward.worker import forward_runner
from streamer.runtime.metrics import new_registry

if TYPE_CHECKING:
    from streamer.dev.demo import Demo

__all__ = ["show_forwarding"]


async def show_forwarding(demo: Demo, step: int) -> None:
    c = demo.checks
    demo.step(step, "Forward gallery changes to a webhook receiver, signed")
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    with Receiver(secret) as receiver:
        settings = demo.settings.replace(
            forward_group_id=f"streamer-demo-forward-{demo.run_id}",
            webhook_url=receiver.url,
            webhook_secret=SecretStr(secret),
            webhook_timeout_s=5.0,
        )
        worker = forward_runner(settings, registry=new_registry(), install_signal_handlers=False)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        get = worker.registry.get_sample_value
        published = demo.counter("streamer_outcome_events_total")
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not task.done():
                # Every outcome the gallery job published so far ends up at the receiver.
                delivered = get("streamer_webhook_events_total", {"outcome": "delivered"}) or 0
                if delivered >= published:
                    break
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)
        records = receiver.snapshot()
    accepted = [r for r in records if r.accepted]
    table = Table("webhook-id", "type", "SKU", "action", "signature", title=receiver.url)
    for r in accepted[:4]:
        event = r.payload
        table.add_row(
            r.webhook_id[:20] + "…",
            event["type"],
            event["id"],
            event["action"],
            "verified (standardwebhooks)" if r.verified else "REJECTED",
        )
    demo.console.print(table)
    c.check(
        len({r.webhook_id for r in accepted}) >= published > 0 and all(r.verified for r in records),
        f"{len(accepted)} deliveries for the {published:.0f} GalleryUpdated events published, "
        "every signature verified by the receiver",
    )
    c.check(
        all(r.headers.get("idempotency-key") == r.webhook_id for r in accepted),
        "each carries its webhook-id as Idempotency-Key (the same on every retry)",
    )
