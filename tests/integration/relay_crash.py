"""The completion relay in a process of its own that dies (``os._exit``, no clean-up) at a
chosen point: the crash windows of ``test_completion_relay``.

    python -m tests.integration.relay_crash after-ack|before-produce
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import streamer.tracking.relay as relay_module
from streamer.contract.codec import Codec
from streamer.settings import load_settings

CRASH_EXIT = 9


def arm(window: str) -> None:
    if window == "after-ack":  # the broker acknowledged; published_at is not recorded yet
        original = relay_module.mark_published

        async def mark(conn: Any, topic: str, bulk_uuids: Any, ends: Any) -> int:
            if bulk_uuids:
                os._exit(CRASH_EXIT)
            return await original(conn, topic, bulk_uuids, ends)

        relay_module.mark_published = mark  # type: ignore[assignment]
    elif window == "before-produce":  # the outbox row is committed; nothing produced yet

        def send(self: Any, publisher: Any, pending: Any) -> Any:
            os._exit(CRASH_EXIT)

        relay_module.CompletionRelay._send = send  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown window {window!r}")


def main() -> None:
    arm(sys.argv[1])
    settings = load_settings(env_file=Path("/nonexistent/dev.env"))
    relay = relay_module.CompletionRelay(
        kafka=settings.kafka,
        database=settings.database,
        topic=settings.topics.import_completed_topic,
        settings=settings.tracking,
        codec=Codec(),
    )
    asyncio.run(relay.run(asyncio.Event()))


if __name__ == "__main__":
    main()
