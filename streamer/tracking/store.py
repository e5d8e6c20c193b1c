"""Tracking's tables: what the intake writes, what the consumer records, what readers see.

Every function takes a connection (the caller owns the transaction): the intake's
own, the consumer's batch transaction (``record_outcomes``), the relay's. A batch
with no tracked message never calls in here.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from streamer.runtime.database import converted
from streamer.tracking.model import OUTCOMES, TrackedOutcome, completion_record

__all__ = [
    "COMPLETED_CHANNEL",
    "NOTIFY_CHANNEL",
    "NewItem",
    "Pending",
    "completed_of",
    "create_bulk",
    "find_completed",
    "latest_bulk_of_request",
    "load_bulk",
    "load_items",
    "mark_published",
    "read_positions",
    "recent_bulks",
    "record_outcomes",
    "settle_bulk",
    "unpublished",
    "unpublished_topics",
]

# The consumer notifies here when it recorded tracked outcomes; the relay wakes up on it.
NOTIFY_CHANNEL = "streamer_bulk_progress"
# The relay notifies here, at the COMMIT that marks bulks complete, with their ids
# (comma-separated): what a request waiting for its bulk (``Prefer: wait``) listens to.
COMPLETED_CHANNEL = "streamer_bulk_completed"


def _text(value: str | None) -> str | None:
    """PostgreSQL's text cannot hold NUL: a request's own bytes are kept, that one shown."""
    return value.replace("\x00", "\\x00") if value is not None else None


@dataclass(frozen=True, slots=True)
class NewItem:
    item_id: int
    sku: str | None
    status: str  # publishing | rejected | superseded
    reason: str | None = None
    error_message: str | None = None
    event_id: str | None = None


# -- the intake ------------------------------------------------------------------------

# One statement each (one round trip, atomic on its own, inside or outside the caller's
# transaction): the intake writes these twice per request, and a BEGIN/COMMIT pair around
# separate statements cost three more round trips each.
_CREATE_BULK = """
WITH bulk AS (
    INSERT INTO bulks (bulk_uuid, request_id, kind, state, items_total, rejected, superseded,
                       completion_topic, traceparent)
    VALUES ($1, $2, $3, 'publishing', $4, $5, $6, $7, $8)
)
INSERT INTO bulk_items (bulk_uuid, item_id, sku, status, reason, error_message, event_id)
SELECT $1, * FROM unnest($9::int[], $10::text[], $11::text[], $12::text[], $13::text[],
                         $14::uuid[])
"""

_SETTLE_BULK = """
WITH delivered AS (
    UPDATE bulk_items SET status = 'accepted'
    WHERE bulk_uuid = $1 AND item_id = ANY($2::int[])
), undeliverable AS (
    UPDATE bulk_items i SET status = 'undeliverable', reason = 'delivery_failed',
        error_message = t.message
    FROM unnest($3::int[], $4::text[]) AS t(item_id, message)
    WHERE i.bulk_uuid = $1 AND i.item_id = t.item_id
)
UPDATE bulks SET state = $5, accepted = cardinality($2::int[]),
    undeliverable = cardinality($3::int[]), accepted_at = now()
WHERE bulk_uuid = $1
"""


async def create_bulk(
    conn: asyncpg.Connection,
    *,
    bulk_uuid: str,
    request_id: str,
    kind: str,
    items: Sequence[NewItem],
    completion_topic: str | None = None,
    traceparent: str | None = None,
) -> None:
    """The bulk and every item, before anything is published (so no outcome can come first).

    ``completion_topic``: where this bulk's ``ImportCompleted`` goes, whoever relays it;
    ``traceparent``: the trace it continues (the intake request's, while tracing is on).
    """
    rejected = sum(1 for i in items if i.status == "rejected")
    superseded = sum(1 for i in items if i.status == "superseded")
    async with converted():
        await conn.execute(
            _CREATE_BULK,
            bulk_uuid,
            _text(request_id),
            kind,
            len(items),
            rejected,
            superseded,
            completion_topic,
            traceparent,
            [i.item_id for i in items],
            [_text(i.sku) for i in items],
            [i.status for i in items],
            [i.reason for i in items],
            [_text(i.error_message) for i in items],
            [i.event_id for i in items],
        )


async def settle_bulk(
    conn: asyncpg.Connection,
    bulk_uuid: str,
    *,
    delivered: Collection[int],
    undeliverable: Mapping[int, str],
) -> str:
    """Record what the broker acknowledged; returns the bulk's state.

    ``accepted`` when every published item was acknowledged, ``partial`` when some were
    not, ``failed`` when none was. Only acknowledged items are waited for.
    """
    state = "accepted" if not undeliverable else ("partial" if delivered else "failed")
    async with converted():
        await conn.execute(
            _SETTLE_BULK,
            bulk_uuid,
            list(delivered),
            list(undeliverable),
            [_text(m) for m in undeliverable.values()],
            state,
        )
    return state


# -- the consumer (inside its batch transaction) -----------------------------------------

# A first outcome settles the item. A later one replaces it only when the item comes back
# from a dead-letter replay (after partial or dead_lettered), never with "duplicate".
_RECORD = """
UPDATE bulk_items i SET
    outcome = CASE WHEN i.outcome IS NULL OR (i.outcome IN ('partial', 'dead_lettered')
                   AND t.outcome <> 'duplicate') THEN t.outcome ELSE i.outcome END,
    outcome_reason = CASE WHEN i.outcome IS NULL OR (i.outcome IN ('partial', 'dead_lettered')
                   AND t.outcome <> 'duplicate') THEN t.reason ELSE i.outcome_reason END,
    processed_at = coalesce(i.processed_at, clock_timestamp())
FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[]) AS t(bulk_uuid, item_id, outcome, reason)
WHERE i.bulk_uuid = t.bulk_uuid AND i.item_id = t.item_id
"""


async def record_outcomes(conn: asyncpg.Connection, outcomes: Sequence[TrackedOutcome]) -> None:
    """Each tracked item's outcome, and a wake-up for the relay delivered at COMMIT."""
    if not outcomes:
        return
    latest = {(o.bulk_uuid, o.item_id): o for o in outcomes}  # one update per row
    async with converted():
        await conn.execute(
            _RECORD,
            [o.bulk_uuid for o in latest.values()],
            [o.item_id for o in latest.values()],
            [o.outcome for o in latest.values()],
            [o.reason for o in latest.values()],
        )
        await conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")


# -- completion and its outbox -------------------------------------------------------------

_COMPLETE = """
WITH done AS (
    SELECT b.bulk_uuid FROM bulks b
    WHERE b.completed_at IS NULL AND b.state IN ('accepted', 'partial')
      AND NOT EXISTS (SELECT 1 FROM bulk_items i
                      WHERE i.bulk_uuid = b.bulk_uuid AND i.outcome IS NULL
                        AND i.event_id IS NOT NULL AND i.status = 'accepted')
    ORDER BY b.created_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE bulks b SET completed_at = now() FROM done WHERE b.bulk_uuid = done.bulk_uuid
RETURNING b.*
"""
_COUNTS = """
SELECT bulk_uuid, outcome, count(*) AS n, max(processed_at) AS last_processed_at
FROM bulk_items WHERE bulk_uuid = ANY($1::uuid[]) AND status = 'accepted'
GROUP BY bulk_uuid, outcome
"""


async def find_completed(
    conn: asyncpg.Connection, *, default_topic: str, limit: int = 100
) -> list[dict[str, Any]]:
    """Mark bulks whose every accepted item is processed complete and queue their event.

    One transaction: the ``completed_at`` guard and the outbox's primary key make a bulk
    complete once, whoever runs this and however often. Each event is queued for its
    bulk's own completion topic (``default_topic`` for bulks that name none), and the
    COMMIT notifies ``COMPLETED_CHANNEL`` with the bulks' ids.
    """
    async with converted(), conn.transaction():
        bulks = await conn.fetch(_COMPLETE, limit)
        if not bulks:
            return []
        ids = [b["bulk_uuid"] for b in bulks]
        counts: dict[Any, dict[str, int]] = {i: {} for i in ids}
        last: dict[Any, datetime | None] = dict.fromkeys(ids)
        for row in await conn.fetch(_COUNTS, ids):
            counts[row["bulk_uuid"]][row["outcome"]] = row["n"]
            when, seen = row["last_processed_at"], last[row["bulk_uuid"]]
            if when is not None and (seen is None or when > seen):
                last[row["bulk_uuid"]] = when
        records = [completion_record(b, counts[b["bulk_uuid"]], b["completed_at"]) for b in bulks]
        await conn.execute(
            "INSERT INTO import_completions (bulk_uuid, record, last_processed_at, topic)"
            " SELECT * FROM unnest($1::uuid[], $2::jsonb[], $3::timestamptz[], $4::text[])"
            " ON CONFLICT (bulk_uuid) DO NOTHING",
            ids,
            [json.dumps(r) for r in records],
            [last[i] for i in ids],
            [b["completion_topic"] or default_topic for b in bulks],
        )
        await conn.execute(
            "SELECT pg_notify($1, $2)", COMPLETED_CHANNEL, ",".join(str(i) for i in ids)
        )
        return records


@dataclass(frozen=True, slots=True)
class Pending:
    bulk_uuid: str
    record: dict[str, Any]
    last_processed_at: datetime | None
    topic: str
    traceparent: str | None = None  # the bulk's trace (while tracing was on at the intake)
    headers: list[tuple[str, bytes]] | None = None  # what the relay sends it with


async def unpublished(
    conn: asyncpg.Connection, *, default_topic: str, limit: int = 500
) -> list[Pending]:
    async with converted():
        rows = await conn.fetch(
            "SELECT c.bulk_uuid::text AS bulk_uuid, c.record, c.last_processed_at, c.topic,"
            " b.traceparent FROM import_completions c LEFT JOIN bulks b USING (bulk_uuid)"
            " WHERE c.published_at IS NULL ORDER BY c.created_at LIMIT $1",
            limit,
        )
    return [
        Pending(
            r["bulk_uuid"],
            json.loads(r["record"]),
            r["last_processed_at"],
            r["topic"] or default_topic,
            r["traceparent"],
        )
        for r in rows
    ]


async def completed_of(conn: asyncpg.Connection, bulk_uuids: Sequence[str]) -> list[str]:
    """Which of these bulks are complete (a waiter's look when a notification may be lost)."""
    async with converted():
        rows = await conn.fetch(
            "SELECT bulk_uuid::text AS bulk_uuid FROM bulks"
            " WHERE bulk_uuid = ANY($1::uuid[]) AND completed_at IS NOT NULL",
            list(bulk_uuids),
        )
    return [r["bulk_uuid"] for r in rows]


async def mark_published(
    conn: asyncpg.Connection, topic: str, bulk_uuids: Collection[str], ends: Mapping[int, int]
) -> int:
    """Outbox rows acknowledged by the broker, and the relay's read position moved to ``ends``
    (partition -> next offset), in one transaction; returns how many rows were still unmarked."""
    marked = 0
    async with converted(), conn.transaction():
        if bulk_uuids:
            status = await conn.execute(
                "UPDATE import_completions SET published_at = now(), topic = $1"
                " WHERE bulk_uuid = ANY($2::uuid[]) AND published_at IS NULL",
                topic,
                list(bulk_uuids),
            )
            marked = int(status.split()[-1])
        if ends:
            await conn.execute(
                "INSERT INTO relay_positions (topic, partition, next_offset)"
                " SELECT $1, * FROM unnest($2::int[], $3::bigint[])"
                " ON CONFLICT (topic, partition) DO UPDATE"
                " SET next_offset = greatest(relay_positions.next_offset, EXCLUDED.next_offset)",
                topic,
                list(ends),
                list(ends.values()),
            )
    return marked


async def unpublished_topics(conn: asyncpg.Connection, *, default_topic: str) -> list[str]:
    """Every topic an earlier leader may have published to without recording it."""
    async with converted():
        rows = await conn.fetch(
            "SELECT DISTINCT coalesce(topic, $1) AS topic FROM import_completions"
            " WHERE published_at IS NULL",
            default_topic,
        )
    return sorted({default_topic, *(r["topic"] for r in rows)})


async def read_positions(conn: asyncpg.Connection, topic: str) -> dict[int, int]:
    async with converted():
        rows = await conn.fetch(
            "SELECT partition, next_offset FROM relay_positions WHERE topic = $1", topic
        )
    return {r["partition"]: r["next_offset"] for r in rows}


# -- readers: the API, the console, `streamer status --request-id` ------------------------------

_BULK_COLUMNS = (
    "bulk_uuid::text AS bulk_uuid, request_id, kind, state, items_total, accepted, rejected,"
    " superseded, undeliverable, created_at, accepted_at, completed_at"
)


def _summary(bulk: Mapping[str, Any], counts: Mapping[str | None, int]) -> dict[str, Any]:
    outcomes = {outcome: counts.get(outcome, 0) for outcome in OUTCOMES}
    pending = counts.get(None, 0)
    return {
        **dict(bulk),
        "counts": {"pending": pending, **outcomes},
        "processed": sum(outcomes.values()),
        "complete": bulk["completed_at"] is not None,
    }


async def load_bulk(conn: asyncpg.Connection, bulk_uuid: str) -> dict[str, Any] | None:
    async with converted():
        bulk = await conn.fetchrow(
            f"SELECT {_BULK_COLUMNS} FROM bulks WHERE bulk_uuid = $1", bulk_uuid
        )
        if bulk is None:
            return None
        rows = await conn.fetch(
            "SELECT outcome, count(*) AS n FROM bulk_items"
            " WHERE bulk_uuid = $1 AND status = 'accepted' GROUP BY outcome",
            bulk_uuid,
        )
    return _summary(bulk, {r["outcome"]: r["n"] for r in rows})


async def latest_bulk_of_request(conn: asyncpg.Connection, request_id: str) -> list[str]:
    """Every bulk submitted with this request_id, newest first."""
    async with converted():
        rows = await conn.fetch(
            "SELECT bulk_uuid::text AS bulk_uuid FROM bulks WHERE request_id = $1"
            " ORDER BY created_at DESC",
            request_id,
        )
    return [r["bulk_uuid"] for r in rows]


async def load_items(
    conn: asyncpg.Connection, bulk_uuid: str, *, after: int = 0, limit: int | None = 100
) -> list[dict[str, Any]]:
    """A page of items in submission order, after item id ``after`` (keyset paging)."""
    async with converted():
        rows = await conn.fetch(
            "SELECT item_id AS id, sku, status, reason, error_message, event_id::text AS event_id,"
            " CASE WHEN status = 'accepted' THEN coalesce(outcome, 'pending') END AS outcome,"
            " outcome_reason, processed_at"
            " FROM bulk_items WHERE bulk_uuid = $1 AND item_id > $2 ORDER BY item_id LIMIT $3",
            bulk_uuid,
            after,
            limit,
        )
    return [dict(r) for r in rows]


async def recent_bulks(conn: asyncpg.Connection, *, limit: int = 50) -> list[dict[str, Any]]:
    """The newest bulks with their progress, for the console."""
    async with converted():
        bulks = await conn.fetch(
            f"SELECT {_BULK_COLUMNS} FROM bulks ORDER BY created_at DESC LIMIT $1", limit
        )
        ids = [b["bulk_uuid"] for b in bulks]
        rows = await conn.fetch(
            "SELECT bulk_uuid::text AS bulk_uuid, outcome, count(*) AS n FROM bulk_items"
            " WHERE bulk_uuid = ANY($1::uuid[]) AND status = 'accepted' GROUP BY 1, 2",
            ids,
        )
    counts: dict[str, dict[str | None, int]] = {i: {} for i in ids}
    for r in rows:
        counts[r["bulk_uuid"]][r["outcome"]] = r["n"]
    return [_summary(b, counts[b["bulk_uuid"]]) for b in bulks]
