"""Retention: bookkeeping rows older than their table's retention are pruned in small batches,
the rest (and everything that is state) stays; and what that means for de-duplication: an
event id is recognised while its outcome row lives, and afterwards the SKU's versions keep
the event stale, or a no-op."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from streamer.gallery.worker import gallery_runner
from streamer.ops.retention import RetentionSettings, bookkeeping
from streamer.runtime.database import Database, connect
from streamer.runtime.metrics import new_registry
from streamer.runtime.retention import Pruner, Pruning
from streamer.settings import Settings
from tests.integration.support import (
    Sender,
    counted,
    drained,
    export_all,
    fetch,
    media,
    prepare,
    processed,
    put_image,
    wait_for,
)

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


async def fill(settings: Settings) -> dict[str, Any]:
    """Bookkeeping rows of every table, some past the default retentions, some not."""
    bulks: dict[str, str] = {}
    async with connect(settings.database.dsn) as conn:
        for i in range(7):
            await _outcome(conn, ago(31 + i))
        for i in range(3):
            await _outcome(conn, ago(29 - i))
        for name, days in (("old-a", 31), ("old-b", 45), ("young", 29)):
            await conn.execute(
                "INSERT INTO request_outcomes (request_id, outcome, events, updated_at)"
                " VALUES ($1, 'written', 3, $2)",
                name,
                ago(days),
            )
        # (created days ago, state, completed, completion: None | published | unpublished)
        shapes = {
            "settled-40": (40, "accepted", True, "published"),
            "pending-40": (40, "accepted", False, None),
            "failed-40": (40, "failed", False, None),
            "settled-100": (100, "accepted", True, "published"),
            "unpublished-100": (100, "accepted", True, "unpublished"),
            "young-10": (10, "accepted", True, "published"),
        }
        for name, (days, state, completed, completion) in shapes.items():
            bulk = str(uuid.uuid4())
            bulks[name] = bulk
            await conn.execute(
                "INSERT INTO bulks (bulk_uuid, request_id, kind, state, items_total, accepted,"
                " created_at, completed_at) VALUES ($1, $2, 'galleries', $3, 5, 5, $4, $5)",
                bulk,
                name,
                state,
                ago(days),
                ago(days - 1) if completed else None,
            )
            await conn.execute(
                "INSERT INTO bulk_items (bulk_uuid, item_id, sku, status, event_id, outcome)"
                " SELECT $1, i, 'S-' || i, 'accepted', gen_random_uuid(), $2"
                " FROM generate_series(1, 5) AS i",
                bulk,
                "written" if completed else None,
            )
            if completion is not None:
                await conn.execute(
                    "INSERT INTO import_completions (bulk_uuid, record, created_at, published_at)"
                    " VALUES ($1, '{}', $2, $3)",
                    bulk,
                    ago(days - 1),
                    ago(days - 1) if completion == "published" else None,
                )
        for key, days in (("old-1", 35), ("old-2", 31), ("young", 29)):
            await conn.execute(
                "INSERT INTO idempotency_keys (principal, route, key, fingerprint, state,"
                " created_at) VALUES ('p', '/v1/galleries/bulk', $1, '\\x00', 'done', $2)",
                key,
                ago(days),
            )
        for offset, days in ((1, 100), (2, 91), (3, 10)):
            await conn.execute(
                "INSERT INTO dead_letter_replays (dlq_topic, dlq_partition, dlq_offset,"
                " target_topic, replayed_at) VALUES ('dlq', 0, $1, 't', $2)",
                offset,
                ago(days),
            )
    return bulks


async def _outcome(conn: Any, at: datetime) -> None:
    await conn.execute(
        'INSERT INTO event_outcomes (event_id, sku, outcome, topic, partition, "offset",'
        " recorded_at) VALUES ($1, 'S', 'written', 't', 0, 0, $2)",
        str(uuid.uuid4()),
        at,
    )


async def counts(settings: Settings, bulks: dict[str, str]) -> dict[str, Any]:
    name_of = {v: k for k, v in bulks.items()}
    items = await fetch(
        settings, "SELECT bulk_uuid::text AS b, count(*) AS n FROM bulk_items GROUP BY 1"
    )
    return {
        "event_outcomes": len(await fetch(settings, "SELECT 1 FROM event_outcomes")),
        "request_outcomes": sorted(
            r["request_id"] for r in await fetch(settings, "SELECT * FROM request_outcomes")
        ),
        "bulks": sorted(
            name_of[r["b"]] for r in await fetch(settings, "SELECT bulk_uuid::text AS b FROM bulks")
        ),
        "items": {name_of[r["b"]]: r["n"] for r in items},
        "completions": sorted(
            name_of[r["b"]]
            for r in await fetch(settings, "SELECT bulk_uuid::text AS b FROM import_completions")
        ),
        "replays": sorted(
            r["dlq_offset"] for r in await fetch(settings, "SELECT * FROM dead_letter_replays")
        ),
        "keys": sorted(r["key"] for r in await fetch(settings, "SELECT key FROM idempotency_keys")),
    }


async def test_each_table_keeps_what_its_retention_keeps(make_settings) -> None:
    settings = make_settings()
    prepare(settings)
    bulks = await fill(settings)
    rules = bookkeeping(RetentionSettings())
    async with Database(settings.database) as db:
        # Two workers at once, in batches of 2 rows: each row is deleted once, by either.
        first, second = await asyncio.gather(
            Pruner(db, rules, batch_rows=2, now=lambda: NOW).prune(),
            Pruner(db, rules, batch_rows=2, now=lambda: NOW).prune(),
        )
        again = await Pruner(db, rules, batch_rows=2, now=lambda: NOW).prune()
    deleted = {t: first[t] + second[t] for t in first}
    assert deleted["event_outcomes"] == 7
    assert deleted["request_outcomes"] == 2
    assert deleted["dead_letter_replays"] == 2
    assert deleted["idempotency_keys"] == 2
    assert set(again.values()) == {0}, "a second round finds nothing left to delete"
    assert await counts(settings, bulks) == {
        "event_outcomes": 3,
        "request_outcomes": ["young"],
        # 100 days: gone whole, unless its completion is not published yet.
        "bulks": ["failed-40", "pending-40", "settled-40", "unpublished-100", "young-10"],
        # 40 days: the items of settled bulks go; one that may still complete keeps them.
        "items": {"pending-40": 5, "unpublished-100": 5, "young-10": 5},
        "completions": ["settled-40", "unpublished-100", "young-10"],
        "replays": [3],
        "keys": ["young"],
    }


async def test_zero_keeps_rows_forever(make_settings) -> None:
    settings = make_settings()
    prepare(settings)
    bulks = await fill(settings)
    forever = RetentionSettings(
        retention_event_outcomes_days=0,
        retention_request_outcomes_days=0,
        retention_bulk_items_days=0,
        retention_import_completions_days=0,
        retention_dead_letter_replays_days=0,
        retention_idempotency_keys_days=0,
    )
    before = await counts(settings, bulks)
    async with Database(settings.database) as db:
        pruner = Pruner(db, bookkeeping(forever), now=lambda: NOW)
        assert pruner.rules == []
        assert await pruner.prune() == {}
    assert await counts(settings, bulks) == before


# -- the de-duplication window --------------------------------------------------------


async def test_an_event_id_is_recognised_for_the_retention_then_versions_decide(
    make_settings, s3_client
) -> None:
    settings = make_settings(topic_partitions=1)
    prepare(settings)
    for path in ("/d/x.jpg", "/d/y.jpg", "/d/z.jpg"):
        put_image(s3_client, settings, path, path.encode())
    e1 = media("D-1", 1, [{"file_path": "/d/x.jpg"}], mode="REPLACE")
    e2 = media("D-1", 2, [{"file_path": "/d/y.jpg"}], mode="REPLACE")
    # The id of e1 reused for other content (and a newer version).
    reuse = media("D-1", 3, [{"file_path": "/d/z.jpg"}], mode="REPLACE", event_id=e1.event_id)
    sender = Sender(settings)
    pruning = Pruning(bookkeeping(settings.retention), interval_s=0.5)
    worker = gallery_runner(
        settings, registry=new_registry(), install_signal_handlers=False, pruning=pruning
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))

    async def step(*events: Any) -> dict[str, int]:
        before = dict(processed(worker)) | {
            f"dlq:{k}": v
            for k, v in counted(worker, "streamer_dead_letters_total", "reason").items()
        }
        sender.send(list(events))

        async def done() -> bool:
            if task.done():
                task.result()
            return await drained(settings, sender.ends)

        await wait_for(done, timeout_s=90, what="the worker to take the step")
        after = dict(processed(worker)) | {
            f"dlq:{k}": v
            for k, v in counted(worker, "streamer_dead_letters_total", "reason").items()
        }
        return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}

    async def gallery() -> tuple[list[str], int]:
        (g,) = await export_all(settings)
        rows = await fetch(settings, "SELECT row_version FROM products WHERE sku = 'D-1'")
        return [i["file_path"] for i in g["images"]], rows[0]["row_version"]

    try:
        # Within the window: recognised by its id.
        assert await step(e1) == {"written": 1}
        assert await step(e1) == {"duplicate": 1}
        assert await step(reuse) == {"dead_lettered": 1, "dlq:duplicate_event_id": 1}
        assert await step(e2) == {"written": 1}
        stored = await gallery()
        assert stored[0] == ["/d/y.jpg"]

        # The window passes: the worker's own pruner deletes the aged outcome rows.
        async with connect(settings.database.dsn) as conn:
            await conn.execute("UPDATE event_outcomes SET recorded_at = now() - interval '31 days'")

        async def pruned() -> bool:
            return not await fetch(settings, "SELECT 1 FROM event_outcomes")

        await wait_for(pruned, timeout_s=30, what="the worker's pruner")

        # Past it: the versions decide. Older than stored: stale; the same version and
        # content: a no-op; nothing is written either way.
        assert await step(e1) == {"stale": 1}
        assert await step(e2) == {"noop": 1}
        assert await gallery() == stored
        # A reused id is no longer recognised: newer than stored, it is applied.
        assert await step(reuse) == {"written": 1}
        assert (await gallery())[0] == ["/d/z.jpg"]
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)
