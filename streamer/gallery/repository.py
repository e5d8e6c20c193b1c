"""The gallery's tables: the state of a batch's SKUs in, the batch's writes out.

Everything a batch needs crosses the connection a constant number of times: one
SELECT for the SKUs' products, one for their images, one for the event ids seen
before, and one statement per kind of row written, whatever the batch size
(set-based ``unnest`` writes, arrays in).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from streamer.gallery.diff import SkuDiff
from streamer.gallery.state import DIGEST_BYTES, SeenEvent, SkuState, StoredImage
from streamer.runtime.database import Database, converted
from streamer.runtime.errors import StateChanged

__all__ = ["GalleryRepository", "OutcomeRow", "RowCounts", "SeenEvent"]

RowCounts = dict[str, int]

_SELECT_PRODUCTS = """
SELECT sku, product_version, gallery_version, deleted, name, enabled, row_version,
       COALESCE(product_event_id::text, ''), COALESCE(gallery_event_id::text, ''),
       gallery_digest
FROM products WHERE sku = ANY($1::text[])
"""
# Roles come comma-joined (cheaper to decode than a text[]), columns in StoredImage's order.
_SELECT_IMAGES = """
SELECT sku, file_path, etag, size_bytes, content_type, label, position, disabled,
       array_to_string(roles, ','), content_version
FROM gallery_images WHERE sku = ANY($1::text[])
"""
_SELECT_SEEN = """
SELECT event_id::text AS event_id, fingerprint, outcome
FROM event_outcomes WHERE event_id = ANY($1::uuid[])
"""
# Products rows are written compare-and-set on the row_version the batch read: a row
# changed since (or created by someone else) is not matched, and the batch is planned again.
_INSERT_PRODUCT = """
INSERT INTO products
    (sku, product_version, gallery_version, deleted, name, enabled, product_event_id,
     gallery_event_id, gallery_digest)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bool[], $5::text[], $6::bool[],
                     $7::uuid[], $8::uuid[], $9::bytea[])
ON CONFLICT (sku) DO NOTHING
RETURNING sku
"""
_UPDATE_PRODUCT = """
UPDATE products p SET
    product_version = u.product_version, gallery_version = u.gallery_version,
    deleted = u.deleted, name = u.name, enabled = u.enabled,
    product_event_id = u.product_event_id, gallery_event_id = u.gallery_event_id,
    gallery_digest = u.gallery_digest, row_version = p.row_version + 1, updated_at = now()
FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bool[], $5::text[], $6::bool[],
            $7::uuid[], $8::uuid[], $9::bytea[], $10::bigint[])
    AS u(sku, product_version, gallery_version, deleted, name, enabled, product_event_id,
         gallery_event_id, gallery_digest, read_version)
WHERE p.sku = u.sku AND p.row_version = u.read_version
RETURNING p.sku
"""
# Roles travel comma-joined (managed role names never contain a comma): unnest
# cannot take an array of variable-length arrays.
_UPSERT_IMAGE = """
INSERT INTO gallery_images
    (sku, file_path, etag, size_bytes, content_type, label, position, disabled, roles, content_version)
SELECT sku, file_path, etag, size_bytes, content_type, label, position, disabled,
       string_to_array(roles, ','), content_version
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
            $7::int[], $8::bool[], $9::text[], $10::int[])
    AS t(sku, file_path, etag, size_bytes, content_type, label, position, disabled, roles,
         content_version)
ON CONFLICT (sku, file_path) DO UPDATE SET
    etag = EXCLUDED.etag, size_bytes = EXCLUDED.size_bytes, content_type = EXCLUDED.content_type,
    label = EXCLUDED.label, position = EXCLUDED.position, disabled = EXCLUDED.disabled,
    roles = EXCLUDED.roles, content_version = EXCLUDED.content_version,
    row_version = gallery_images.row_version + 1, updated_at = now()
"""
_DELETE_IMAGES = """
DELETE FROM gallery_images g
USING unnest($1::text[], $2::text[]) AS t(sku, file_path)
WHERE g.sku = t.sku AND g.file_path = t.file_path
"""
_INSERT_OUTCOME = """
INSERT INTO event_outcomes
    (event_id, sku, request_id, outcome, reason, fingerprint, topic, partition, "offset")
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::int[], $9::bigint[])
ON CONFLICT (event_id) DO UPDATE SET
    outcome = EXCLUDED.outcome, reason = EXCLUDED.reason, fingerprint = EXCLUDED.fingerprint,
    topic = EXCLUDED.topic, partition = EXCLUDED.partition, "offset" = EXCLUDED."offset",
    applications = event_outcomes.applications + 1, recorded_at = now()
"""
_COUNT_REQUESTS = """
INSERT INTO request_outcomes (request_id, outcome, events)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
ON CONFLICT (request_id, outcome) DO UPDATE SET
    events = request_outcomes.events + EXCLUDED.events, updated_at = now()
"""


@dataclass(frozen=True, slots=True)
class OutcomeRow:
    event_id: str
    sku: str | None
    request_id: str | None
    outcome: str
    reason: str | None
    fingerprint: str | None
    topic: str
    partition: int
    offset: int


def _stored_digest(digest: bytes | None, gallery_event_id: str) -> bytes | None:
    """The digest as stored: followed by the gallery event id it holds with. A writer that
    does not know the column (an older streamer, a rollback) moves the gallery's event id
    and leaves the digest behind, which then no longer holds."""
    if digest is None or not gallery_event_id:
        return None
    return digest + gallery_event_id.encode()


def _digest_of(stored: bytes | None, gallery_event_id: str) -> bytes | None:
    if stored is None or not gallery_event_id or stored[DIGEST_BYTES:] != gallery_event_id.encode():
        return None
    return stored[:DIGEST_BYTES]


def _columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows to one array per column, for ``unnest``."""
    return [list(column) for column in zip(*rows, strict=True)]


class GalleryRepository:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def load(
        self, skus: Collection[str], event_ids: Collection[str]
    ) -> tuple[dict[str, SkuState], dict[str, SeenEvent]]:
        """Stored state of every SKU (unknown SKUs get an empty state) and the event ids seen.

        Two independent reads on two pooled connections, in parallel. If one fails the
        other is cancelled, so the error surfaces as itself, not as a group.
        """
        states_task = asyncio.ensure_future(self.load_states(skus))
        try:
            seen = await self.seen_events(event_ids)
            states = await states_task
        finally:
            if not states_task.done():
                states_task.cancel()
                await asyncio.gather(states_task, return_exceptions=True)
        return states, seen

    async def load_states(self, skus: Collection[str]) -> dict[str, SkuState]:
        keys = list(skus)
        async with self.database.acquire() as conn:
            products = await conn.fetch(_SELECT_PRODUCTS, keys)
            images = await conn.fetch(_SELECT_IMAGES, keys)
        # Thousands of rows per batch: unpacked by position, built without keyword lookups.
        by_sku: dict[str, dict[str, StoredImage]] = {}
        for sku, path, etag, size, ctype, label, pos, disabled, roles, version in images:
            by_sku.setdefault(sku, {})[path] = StoredImage(
                path, etag, size, ctype, label, pos, disabled,
                tuple(sorted(roles.split(","))) if roles else (),
                version,
            )  # fmt: skip
        states: dict[str, SkuState] = {}
        for sku, pv, gv, deleted, name, enabled, rv, product_id, gallery_id, digest in products:
            states[sku] = SkuState(
                sku, pv, gv, deleted, name, enabled, by_sku.get(sku, {}), True, rv,
                product_id, gallery_id, _digest_of(digest, gallery_id),
            )  # fmt: skip
        for sku in keys:
            if sku not in states:
                states[sku] = SkuState(sku)
        return states

    async def seen_events(self, event_ids: Collection[str]) -> dict[str, SeenEvent]:
        if not event_ids:
            return {}
        rows = await self.database.fetch(_SELECT_SEEN, list(event_ids))
        return {r["event_id"]: SeenEvent(r["fingerprint"], r["outcome"]) for r in rows}


async def apply_diffs(conn: asyncpg.Connection, diffs: Iterable[SkuDiff]) -> RowCounts:
    """Write the diffs of a batch (or of one SKU, when the checkpoint isolates a data error).

    The products rows first, each only if it still has the version the batch read (the
    row lock then keeps any other writer of the SKU waiting until this commits); a SKU
    changed since raises ``StateChanged`` before any of its image rows is touched.
    """
    created: list[tuple[Any, ...]] = []
    updated: list[tuple[Any, ...]] = []
    images: list[tuple[Any, ...]] = []
    deletes: list[tuple[str, str]] = []
    counts = {"insert": 0, "update": 0, "delete": 0, "product": 0}
    for d in diffs:
        if d.product is not None:
            p = d.product
            row = (
                p.sku, p.product_version, p.gallery_version, p.deleted, p.name, p.enabled,
                p.product_event_id or None, p.gallery_event_id or None,
                _stored_digest(p.gallery_digest, p.gallery_event_id),
            )  # fmt: skip
            if d.read_version:
                updated.append((*row, d.read_version))
            else:
                created.append(row)
        for img in (*d.inserts, *d.content_changes, *d.metadata_changes):
            images.append(
                (
                    d.sku,
                    img.file_path,
                    img.etag,
                    img.size,
                    img.content_type,
                    img.label,
                    img.position,
                    img.disabled,
                    ",".join(img.roles),
                    img.content_version,
                )
            )
        deletes.extend((d.sku, path) for path in d.removes)
        counts["insert"] += len(d.inserts)
        counts["update"] += len(d.content_changes) + len(d.metadata_changes)
        counts["delete"] += len(d.removes)
    async with converted():
        written: set[str] = set()
        if created:
            written.update(r[0] for r in await conn.fetch(_INSERT_PRODUCT, *_columns(created)))
        if updated:
            written.update(r[0] for r in await conn.fetch(_UPDATE_PRODUCT, *_columns(updated)))
        changed = sorted({r[0] for r in (*created, *updated)} - written)
        if changed:
            raise StateChanged(changed)
        counts["product"] = len(written)
        if deletes:
            await conn.execute(_DELETE_IMAGES, *_columns(deletes))
        if images:
            await conn.execute(_UPSERT_IMAGE, *_columns(images))
    return counts


async def record_outcomes(
    conn: asyncpg.Connection,
    rows: Sequence[OutcomeRow],
    request_counts: Mapping[tuple[str, str], int],
) -> None:
    async with converted():
        if rows:
            # Last row per event_id: one statement cannot upsert the same key twice.
            latest = {r.event_id: r for r in rows}
            await conn.execute(
                _INSERT_OUTCOME,
                *_columns(
                    [
                        (
                            r.event_id,
                            r.sku,
                            r.request_id,
                            r.outcome,
                            r.reason,
                            r.fingerprint,
                            r.topic,
                            r.partition,
                            r.offset,
                        )
                        for r in latest.values()
                    ]
                ),
            )
        if request_counts:
            keys = list(request_counts)
            await conn.execute(
                _COUNT_REQUESTS,
                [k[0] for k in keys],
                [k[1] for k in keys],
                [request_counts[k] for k in keys],
            )
