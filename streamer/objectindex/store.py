"""The ``objects`` table: read a batch's keys, write what is newer, and the galleries by path.

Every call is set-based (arrays in, ``unnest``), so a batch costs a constant number of
statements whatever its size. Writes go through one rule: a row changes only for a
newer record of its key (``records.newer``, also enforced by the statement itself,
so two writers of one key cannot step back each other's row).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from streamer.objectindex.records import ObjectChange, latest_per_key, newer
from streamer.runtime.database import converted

__all__ = [
    "IndexedObject",
    "Upserted",
    "galleries_using",
    "live_under",
    "read_objects",
    "read_objects_locked",
    "upsert_changes",
]

_SELECT = """
SELECT key, etag, size_bytes, content_type, deleted, sequencer, event_time
FROM objects WHERE bucket = $1 AND key = ANY($2::text[])
"""
_LOCK = _SELECT + " ORDER BY key FOR UPDATE"
_SHARE = _SELECT + " ORDER BY key FOR SHARE"
# The same order rule as records.newer, for a row someone else wrote after our read.
_UPSERT = """
INSERT INTO objects AS o
    (bucket, key, etag, size_bytes, content_type, deleted, sequencer, event_time, source)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::bool[],
                     $7::text[], $8::timestamptz[], $9::text[])
ON CONFLICT (bucket, key) DO UPDATE SET
    etag = EXCLUDED.etag, size_bytes = EXCLUDED.size_bytes,
    content_type = COALESCE(EXCLUDED.content_type,
                            CASE WHEN o.etag = EXCLUDED.etag THEN o.content_type END),
    deleted = EXCLUDED.deleted, sequencer = EXCLUDED.sequencer,
    event_time = EXCLUDED.event_time, source = EXCLUDED.source, updated_at = now()
WHERE CASE
    WHEN EXCLUDED.sequencer IS NOT NULL AND o.sequencer IS NOT NULL THEN
        lpad(EXCLUDED.sequencer, greatest(length(EXCLUDED.sequencer), length(o.sequencer)), '0')
        > lpad(o.sequencer, greatest(length(EXCLUDED.sequencer), length(o.sequencer)), '0')
    ELSE EXCLUDED.event_time >= o.event_time
END
RETURNING o.key
"""
_UNDER = """
SELECT key, etag, size_bytes, content_type, deleted, sequencer, event_time
FROM objects
WHERE bucket = $1 AND starts_with(key, $2) AND NOT deleted AND key COLLATE "C" > $3
ORDER BY key COLLATE "C" LIMIT $4
"""
_GALLERIES = """
SELECT file_path, sku, etag, content_version FROM gallery_images WHERE file_path = ANY($1::text[])
"""


@dataclass(frozen=True, slots=True)
class IndexedObject:
    key: str
    etag: str | None
    size: int | None
    content_type: str | None
    deleted: bool
    sequencer: str | None
    event_time: datetime


@dataclass(frozen=True, slots=True)
class Upserted:
    """A change the index took (it was newer than the row), with what the row held before."""

    change: ObjectChange
    before: IndexedObject | None

    @property
    def content_changed(self) -> bool:
        """Deleted, or different bytes than the index knew (or nothing known before)."""
        b = self.before
        if self.change.deleted:
            return b is None or not b.deleted
        return b is None or b.deleted or b.etag != self.change.etag


def _row(r: asyncpg.Record) -> IndexedObject:
    return IndexedObject(
        r["key"],
        r["etag"],
        r["size_bytes"],
        r["content_type"],
        r["deleted"],
        r["sequencer"],
        r["event_time"],
    )


async def read_objects(
    conn: asyncpg.Connection, bucket: str, keys: Collection[str]
) -> dict[str, IndexedObject]:
    """What the index holds for ``keys`` (keys it does not know are absent)."""
    if not keys:
        return {}
    async with converted():
        rows = await conn.fetch(_SELECT, bucket, list(keys))
    return {r["key"]: _row(r) for r in rows}


async def read_objects_locked(
    conn: asyncpg.Connection, bucket: str, keys: Collection[str]
) -> dict[str, IndexedObject]:
    """``read_objects`` holding a share lock on the rows until the transaction ends.

    A gallery writing images takes it: an index write of the same keys (which locks them for
    update, then looks for the galleries using them) either waits for the gallery's commit
    and then sees its rows, or commits first and is seen here. Either way one side notices
    a gallery stored with bytes the bucket no longer has.
    """
    if not keys:
        return {}
    async with converted():
        rows = await conn.fetch(_SHARE, bucket, sorted(keys))
    return {r["key"]: _row(r) for r in rows}


async def live_under(
    conn: asyncpg.Connection, bucket: str, prefix: str, *, page: int = 5000
) -> AsyncIterator[IndexedObject]:
    """Every key the index holds as present under ``prefix``, in key order, page by page."""
    after = ""
    while True:
        async with converted():
            rows = await conn.fetch(_UNDER, bucket, prefix, after, page)
        for r in rows:
            yield _row(r)
        if len(rows) < page:
            return
        after = rows[-1]["key"]


async def upsert_changes(
    conn: asyncpg.Connection, changes: Iterable[ObjectChange], *, source: str
) -> list[Upserted]:
    """Write the newest change per key where it is newer than the row; returns those taken.

    Call it inside a transaction: the rows are locked while they are compared.
    """
    latest = latest_per_key(changes)
    if not latest:
        return []
    by_bucket: dict[str, list[ObjectChange]] = {}
    for change in latest.values():
        by_bucket.setdefault(change.bucket, []).append(change)
    taken: list[Upserted] = []
    async with converted():
        for bucket, group in by_bucket.items():
            rows = await conn.fetch(_LOCK, bucket, [c.key for c in group])
            before = {r["key"]: _row(r) for r in rows}
            wanted = [
                Upserted(c, before.get(c.key))
                for c in group
                if (b := before.get(c.key)) is None
                or newer((c.sequencer, c.event_time), (b.sequencer, b.event_time))
            ]
            if not wanted:
                continue
            written = {
                r["key"]
                for r in await conn.fetch(
                    _UPSERT, *_columns([_values(u.change, source) for u in wanted])
                )
            }
            taken.extend(u for u in wanted if u.change.key in written)
    return taken


def _values(c: ObjectChange, source: str) -> tuple[Any, ...]:
    return (
        c.bucket,
        c.key,
        c.etag,
        c.size,
        c.content_type,
        c.deleted,
        c.sequencer,
        c.event_time,
        source,
    )


def _columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)]


async def galleries_using(
    conn: asyncpg.Connection, paths: Collection[str]
) -> dict[str, list[tuple[str, str, int]]]:
    """file path -> [(sku, stored etag, content_version)] of the galleries that hold it (by
    index, no scan).

    Reads the gallery's table without writing it: the gallery job stays its only writer.
    """
    if not paths:
        return {}
    async with converted():
        rows = await conn.fetch(_GALLERIES, list(paths))
    out: dict[str, list[tuple[str, str, int]]] = {}
    for path, sku, etag, content_version in rows:
        out.setdefault(path, []).append((sku, etag, content_version))
    return out
