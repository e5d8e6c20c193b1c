"""Exactly one ImportCompleted per bulk: through a crash at each point of the relay's
publication, and with two relays competing for the lead."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import asyncpg
import pytest

from streamer.contract.codec import Codec
from streamer.settings import Settings
from streamer.tracking.model import TrackedOutcome
from streamer.tracking.relay import CompletionRelay
from streamer.tracking.store import NewItem, create_bulk, record_outcomes, settle_bulk
from tests.integration.relay_crash import CRASH_EXIT
from tests.integration.support import fetch, prepare, read_topic, settings_env, wait_for

pytestmark = pytest.mark.integration


def relay_settings(make_settings) -> Settings:
    settings = make_settings(completion_delivery_timeout_s=1.0, completion_poll_interval_s=0.2)
    prepare(settings)
    return settings


async def complete_bulk(settings: Settings, items: int = 3) -> str:
    """A bulk whose every item has been processed, as the intake and the consumer leave it."""
    bulk = str(uuid.uuid4())
    conn = await asyncpg.connect(settings.database.dsn)
    try:
        await create_bulk(
            conn,
            bulk_uuid=bulk,
            request_id=f"req-{bulk[:8]}",
            kind="galleries",
            items=[
                NewItem(i, f"SKU-{i}", "publishing", event_id=str(uuid.uuid4()))
                for i in range(1, items + 1)
            ],
        )
        await settle_bulk(conn, bulk, delivered=list(range(1, items + 1)), undeliverable={})
        async with conn.transaction():
            await record_outcomes(
                conn, [TrackedOutcome(bulk, i, "written") for i in range(1, items + 1)]
            )
    finally:
        await conn.close()
    return bulk


def relay_for(settings: Settings) -> CompletionRelay:
    return CompletionRelay(
        kafka=settings.kafka,
        database=settings.database,
        topic=settings.topics.import_completed_topic,
        settings=settings.tracking,
        codec=Codec(),
    )


def crash_relay(settings: Settings, window: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.relay_crash", window],
        env=settings_env(settings),
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == CRASH_EXIT, done.stderr.decode()[-2000:]


def completions(settings: Settings) -> list[str]:
    return [
        str(Codec().decode(m.value()).data["bulk_uuid"])
        for m in read_topic(settings, settings.topics.import_completed_topic, idle_s=1.5)
    ]


async def published_at(settings: Settings, bulk: str) -> object:
    rows = await fetch(
        settings, "SELECT published_at FROM import_completions WHERE bulk_uuid = $1", bulk
    )
    return rows[0]["published_at"] if rows else "no outbox row"


async def run_relay_until(settings: Settings, relay: CompletionRelay, bulk: str) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:

        async def recorded() -> bool:
            if task.done():
                task.result()
            return await published_at(settings, bulk) not in (None, "no outbox row")

        await wait_for(recorded, timeout_s=60, what="the completion to be recorded")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


async def test_crash_after_the_ack_before_the_record_never_publishes_twice(make_settings) -> None:
    settings = relay_settings(make_settings)
    bulk = await complete_bulk(settings)
    crash_relay(settings, "after-ack")
    assert completions(settings) == [bulk], "published before the crash"
    assert await published_at(settings, bulk) is None, "the crash came before the record"

    takeover = relay_for(settings)
    await run_relay_until(settings, takeover, bulk)
    assert takeover.recovered == 1 and takeover.published == 0
    assert completions(settings) == [bulk]


async def test_crash_before_producing_publishes_once_later(make_settings) -> None:
    settings = relay_settings(make_settings)
    bulk = await complete_bulk(settings)
    crash_relay(settings, "before-produce")
    assert completions(settings) == []
    assert await published_at(settings, bulk) is None, "queued in the outbox, not published"

    takeover = relay_for(settings)
    await run_relay_until(settings, takeover, bulk)
    assert takeover.published == 1 and takeover.recovered == 0
    assert completions(settings) == [bulk]


async def test_two_relays_one_leader_and_a_takeover(make_settings) -> None:
    settings = relay_settings(make_settings)
    first = await complete_bulk(settings)
    relays = [relay_for(settings), relay_for(settings)]
    stops = [asyncio.Event(), asyncio.Event()]
    tasks = [asyncio.create_task(r.run(s)) for r, s in zip(relays, stops, strict=True)]
    try:

        async def one_published() -> bool:
            return await published_at(settings, first) not in (None, "no outbox row")

        await wait_for(one_published, timeout_s=60, what="the first bulk's completion")
        assert [r.leading for r in relays].count(True) == 1
        leader = next(i for i, r in enumerate(relays) if r.leading)
        stops[leader].set()
        await asyncio.wait_for(tasks[leader], timeout=30)
        second = await complete_bulk(settings, items=2)
        other = relays[1 - leader]
        await wait_for(
            lambda: asyncio.sleep(0, other.leading and other.published == 1),
            timeout_s=60,
            what="the other relay to take over and publish",
        )
    finally:
        for stop in stops:
            stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    assert sorted(completions(settings)) == sorted([first, second])
    assert relays[leader].published + relays[1 - leader].published == 2
