"""PostgreSQL: migrations, the state of a batch's SKUs, and the batch write with fenced offsets.

Everything a batch needs crosses the connection a constant number of times:
one SELECT for the SKUs' products, one for their images, one for the event
ids already seen, and one transaction for the writes, whatever the batch size.
asyncpg errors are converted here into the streamer hierarchy: connection
problems, timeouts, serialization failures and deadlocks are retriable
(``DatabaseUnavailable``); integrity and data errors belong to the data
(``DatabaseDataError``) and are isolated to their SKU by the caller.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import asyncpg

from streamer.diff import SkuDiff
from streamer.errors import DatabaseDataError, DatabaseUnavailable, FencedError
from streamer.gallery import SkuState, StoredImage

__all__ = [
    "Database",
    "OffsetClaim",
    "OutcomeRow",
    "SeenEvent",
    "convert_error",
    "migrate",
]

log = logging.getLogger(__name__)

_MIGRATION_LOCK = int.from_bytes(
    hashlib.sha256(b"streamer.migrations").digest()[:8], "big", signed=True
)


def convert_error(exc: BaseException) -> Exception:
    """Map an asyncpg/OS error onto the streamer hierarchy."""
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError | asyncpg.DataError):
        return DatabaseDataError(f"{type(exc).__name__}: {exc}")
    if isinstance(
        exc,
        asyncpg.SerializationError
        | asyncpg.DeadlockDetectedError
        | asyncpg.PostgresConnectionError
        | asyncpg.InterfaceError
        | asyncpg.CannotConnectNowError
        | asyncpg.AdminShutdownError
        | asyncpg.TooManyConnectionsError
        | asyncpg.QueryCanceledError
        | ConnectionError
        | OSError
        | asyncio.TimeoutError,
    ):
        return DatabaseUnavailable(f"PostgreSQL unavailable: {type(exc).__name__}: {exc}")
    if isinstance(exc, asyncpg.PostgresError):
        # Anything else from the server (e.g. an operator dropped a table) is not the data's fault
        # and may be fixed by a human; retrying keeps the events instead of dead-lettering them.
        return DatabaseUnavailable(f"PostgreSQL error: {type(exc).__name__}: {exc}")
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


@asynccontextmanager
async def _converted() -> AsyncIterator[None]:
    try:
        yield
    except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise convert_error(exc) from exc


def _migration_files() -> list[tuple[str, str]]:
    folder = resources.files("streamer.migrations")
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(p.name.removesuffix(".sql"), p.read_text()) for p in files]


async def migrate(dsn: str) -> list[str]:
    """Apply pending migrations in order; safe to run from several processes at once."""
    async with _converted():
        conn = await asyncpg.connect(dsn, timeout=10)
    try:
        async with _converted(), conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            applied = []
            for version, sql in _migration_files():
                if version in done:
                    continue
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
                applied.append(version)
            return applied
    finally:
        await conn.close()


@dataclass(frozen=True, slots=True)
class SeenEvent:
    fingerprint: str | None
    outcome: str


@dataclass(frozen=True, slots=True)
class OffsetClaim:
    topic: str
    partition: int
    next_offset: int  # -1: nothing stored
    epoch: int


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


_SELECT_PRODUCTS = """
SELECT sku, product_version, gallery_version, deleted, name, enabled
FROM products WHERE sku = ANY($1::text[])
"""
_SELECT_IMAGES = """
SELECT sku, file_path, etag, size_bytes, content_type, label, position, disabled, roles, content_version
FROM gallery_images WHERE sku = ANY($1::text[])
"""
_SELECT_SEEN = """
SELECT event_id::text AS event_id, fingerprint, outcome
FROM event_outcomes WHERE event_id = ANY($1::uuid[])
"""
_FENCED_OFFSETS = """
UPDATE consumer_offsets o SET next_offset = u.next_offset, updated_at = now()
FROM unnest($2::text[], $3::int[], $4::bigint[], $5::bigint[]) AS u(topic, partition, next_offset, epoch)
WHERE o.group_id = $1 AND o.topic = u.topic AND o.partition = u.partition AND o.epoch = u.epoch
RETURNING o.topic, o.partition
"""
# Set-based writes: one statement per kind of row for the whole batch, arrays in,
# so a batch costs a handful of round trips whatever its size.
_UPSERT_PRODUCT = """
INSERT INTO products (sku, product_version, gallery_version, deleted, name, enabled)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bool[], $5::text[], $6::bool[])
ON CONFLICT (sku) DO UPDATE SET
    product_version = EXCLUDED.product_version, gallery_version = EXCLUDED.gallery_version,
    deleted = EXCLUDED.deleted, name = EXCLUDED.name, enabled = EXCLUDED.enabled,
    row_version = products.row_version + 1, updated_at = now()
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


def _columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows to one array per column, for ``unnest``."""
    return [list(column) for column in zip(*rows, strict=True)]


def _image(row: Mapping[str, Any]) -> StoredImage:
    return StoredImage(
        file_path=row["file_path"],
        etag=row["etag"],
        size=row["size_bytes"],
        content_type=row["content_type"],
        label=row["label"],
        position=row["position"],
        disabled=row["disabled"],
        roles=tuple(row["roles"]),
        content_version=row["content_version"],
    )


class Database:
    """A small front over an asyncpg pool for the consumer's queries."""

    def __init__(self, dsn: str, *, pool_size: int = 4, timeout_s: float = 10.0) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._timeout_s = timeout_s
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        async with _converted():
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=self._pool_size,
                timeout=self._timeout_s,
                command_timeout=self._timeout_s * 3,
            )

    async def stop(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def __aenter__(self) -> Database:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise DatabaseUnavailable("database pool is not started")
        return self._pool

    async def ping(self) -> None:
        async with _converted(), self.pool.acquire(timeout=self._timeout_s) as conn:
            await conn.fetchval("SELECT 1")

    async def load_states(self, skus: Collection[str]) -> dict[str, SkuState]:
        """Stored state of every SKU in the batch; unknown SKUs get an empty state."""
        keys = list(skus)
        async with _converted(), self.pool.acquire(timeout=self._timeout_s) as conn:
            products = await conn.fetch(_SELECT_PRODUCTS, keys)
            images = await conn.fetch(_SELECT_IMAGES, keys)
        by_sku: dict[str, dict[str, StoredImage]] = {}
        for row in images:
            by_sku.setdefault(row["sku"], {})[row["file_path"]] = _image(row)
        states = {sku: SkuState(sku=sku) for sku in keys}
        for row in products:
            sku = row["sku"]
            states[sku] = SkuState(
                sku=sku,
                product_version=row["product_version"],
                gallery_version=row["gallery_version"],
                deleted=row["deleted"],
                name=row["name"],
                enabled=row["enabled"],
                images=by_sku.get(sku, {}),
                exists=True,
            )
        return states

    async def seen_events(self, event_ids: Collection[str]) -> dict[str, SeenEvent]:
        if not event_ids:
            return {}
        async with _converted(), self.pool.acquire(timeout=self._timeout_s) as conn:
            rows = await conn.fetch(_SELECT_SEEN, list(event_ids))
        return {r["event_id"]: SeenEvent(r["fingerprint"], r["outcome"]) for r in rows}

    async def claim_partitions(
        self, group_id: str, owner: str, partitions: Sequence[tuple[str, int]]
    ) -> list[OffsetClaim]:
        """Take ownership of newly assigned partitions: bump their epoch and read their offsets.

        The UPDATE waits for a previous owner's open batch transaction on the same
        rows, so the offsets read here include everything it committed.
        """
        if not partitions:
            return []
        topics = [t for t, _ in partitions]
        parts = [p for _, p in partitions]
        async with (
            _converted(),
            self.pool.acquire(timeout=self._timeout_s) as conn,
            conn.transaction(),
        ):
            rows = await conn.fetch(
                """
                INSERT INTO consumer_offsets (group_id, topic, partition, epoch, owner)
                SELECT $1, t, p, 1, $2 FROM unnest($3::text[], $4::int[]) AS u(t, p)
                ON CONFLICT (group_id, topic, partition) DO UPDATE SET
                    epoch = consumer_offsets.epoch + 1, owner = EXCLUDED.owner, updated_at = now()
                RETURNING topic, partition, next_offset, epoch
                """,
                group_id,
                owner,
                topics,
                parts,
            )
        return [OffsetClaim(r["topic"], r["partition"], r["next_offset"], r["epoch"]) for r in rows]

    async def stored_offsets(self, group_id: str) -> dict[tuple[str, int], int]:
        async with _converted(), self.pool.acquire(timeout=self._timeout_s) as conn:
            rows = await conn.fetch(
                "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = $1",
                group_id,
            )
        return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[BatchWriter]:
        """One transaction; the body writes through the BatchWriter, commit happens on exit."""
        async with (
            _converted(),
            self.pool.acquire(timeout=self._timeout_s) as conn,
            conn.transaction(),
        ):
            yield BatchWriter(conn)


class BatchWriter:
    """Writes of one transaction: fenced offsets first (row locks), then rows and outcomes."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.rows_written: dict[str, int] = {"insert": 0, "update": 0, "delete": 0}

    async def advance_offsets(
        self, group_id: str, offsets: Mapping[tuple[str, int], tuple[int, int]]
    ) -> None:
        """Set next offsets where this worker still holds the epoch; raise FencedError otherwise.

        offsets: (topic, partition) -> (next_offset, epoch)
        """
        if not offsets:
            return
        keys = list(offsets)
        async with _converted():
            rows = await self._conn.fetch(
                _FENCED_OFFSETS,
                group_id,
                [t for t, _ in keys],
                [p for _, p in keys],
                [offsets[k][0] for k in keys],
                [offsets[k][1] for k in keys],
            )
        updated = {(r["topic"], r["partition"]) for r in rows}
        lost = sorted(set(keys) - updated)
        if lost:
            raise FencedError(lost)

    async def apply(self, diffs: Iterable[SkuDiff]) -> None:
        products: list[tuple[Any, ...]] = []
        images: list[tuple[Any, ...]] = []
        deletes: list[tuple[str, str]] = []
        counts = {"insert": 0, "update": 0, "delete": 0}
        for d in diffs:
            if d.product is not None:
                p = d.product
                products.append(
                    (p.sku, p.product_version, p.gallery_version, p.deleted, p.name, p.enabled)
                )
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
        async with _converted():
            if products:
                await self._conn.execute(_UPSERT_PRODUCT, *_columns(products))
            if deletes:
                await self._conn.execute(_DELETE_IMAGES, *_columns(deletes))
            if images:
                await self._conn.execute(_UPSERT_IMAGE, *_columns(images))
        for op, n in counts.items():
            self.rows_written[op] += n

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """A nested transaction, so one SKU's refused rows roll back alone."""
        async with _converted(), self._conn.transaction():
            yield

    async def record_outcomes(
        self, rows: Sequence[OutcomeRow], request_counts: Mapping[tuple[str, str], int]
    ) -> None:
        async with _converted():
            if rows:
                # Last row per event_id: one statement cannot upsert the same key twice.
                latest = {r.event_id: r for r in rows}
                await self._conn.execute(
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
                await self._conn.execute(
                    _COUNT_REQUESTS,
                    [k[0] for k in keys],
                    [k[1] for k in keys],
                    [request_counts[k] for k in keys],
                )
