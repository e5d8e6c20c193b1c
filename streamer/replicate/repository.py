"""The replicator's tables: versions per SKU, references per path, and what each path holds.

Reads happen in ``plan`` (one round trip for the batch's SKUs, one for their paths);
writes happen in the checkpoint's transaction, set-based. Paths are serialised between
workers with advisory transaction locks (no row is written to take them): shared for a
path a batch keeps or copies, exclusive for a path it may release. Deleting at the
destination is two-phase: the transaction that drops a path's last reference marks it
``deleting`` (a new generation); the object is deleted after that commit, under the
path's exclusive lock, by ``take_deletes``. A writer that finds a path's generation
changed since it looked, or the path ``deleting``, checks the destination again under
its lock instead of trusting what it saw, so a delete and a copy of the same path never
cross, even when a worker dies between them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from streamer.replicate.rules import ObjectRow
from streamer.runtime.database import Database

__all__ = ["ReplicaRepository", "lock_key"]


def lock_key(destination: str, path: str) -> int:
    digest = hashlib.blake2b(f"{destination}\0{path}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class ReplicaRepository:
    def __init__(self, database: Database | None, destination: str) -> None:
        self.database = database
        self.destination = destination

    # -- reads (plan) ----------------------------------------------------------------------

    async def load_skus(self, skus: Collection[str]) -> tuple[dict[str, int], dict[str, set[str]]]:
        """Applied versions and referenced paths of the given SKUs."""
        assert self.database is not None
        async with self.database.acquire() as conn:
            versions = await conn.fetch(
                "SELECT sku, version FROM replica_skus WHERE destination = $1 AND sku = ANY($2)",
                self.destination,
                list(skus),
            )
            refs = await conn.fetch(
                "SELECT sku, file_path FROM replica_refs WHERE destination = $1 AND sku = ANY($2)",
                self.destination,
                list(skus),
            )
        held: dict[str, set[str]] = {}
        for r in refs:
            held.setdefault(r["sku"], set()).add(r["file_path"])
        return {r["sku"]: r["version"] for r in versions}, held

    async def load_objects(self, paths: Collection[str]) -> dict[str, ObjectRow]:
        assert self.database is not None
        async with self.database.acquire() as conn:
            return await self.objects(conn, paths)

    async def objects(self, conn: Any, paths: Collection[str]) -> dict[str, ObjectRow]:
        rows = await conn.fetch(
            "SELECT file_path, state, etag, gen FROM replica_objects"
            " WHERE destination = $1 AND file_path = ANY($2)",
            self.destination,
            list(paths),
        )
        return {r["file_path"]: ObjectRow(r["state"], r["etag"], r["gen"]) for r in rows}

    # -- writes (inside a transaction) -----------------------------------------------------

    async def lock(self, conn: Any, shared: Iterable[str], exclusive: Iterable[str]) -> None:
        """Advisory locks for the paths, taken in one order so that two workers cannot deadlock."""
        modes: dict[int, bool] = {lock_key(self.destination, p): False for p in shared}
        for p in exclusive:
            modes[lock_key(self.destination, p)] = True
        if not modes:
            return
        keys = sorted(modes)
        await conn.execute(
            "SELECT CASE WHEN x THEN pg_advisory_xact_lock(k) ELSE pg_advisory_xact_lock_shared(k)"
            " END FROM unnest($1::bigint[], $2::bool[]) AS t(k, x)",
            keys,
            [modes[k] for k in keys],
        )

    async def set_refs(
        self, conn: Any, added: list[tuple[str, str]], removed: list[tuple[str, str]]
    ) -> None:
        if removed:
            await conn.execute(
                "DELETE FROM replica_refs r USING unnest($2::text[], $3::text[]) AS d(sku, p)"
                " WHERE r.destination = $1 AND r.sku = d.sku AND r.file_path = d.p",
                self.destination,
                [s for s, _ in removed],
                [p for _, p in removed],
            )
        if added:
            await conn.execute(
                "INSERT INTO replica_refs (destination, sku, file_path)"
                " SELECT $1, s, p FROM unnest($2::text[], $3::text[]) AS a(s, p)"
                " ON CONFLICT DO NOTHING",
                self.destination,
                [s for s, _ in added],
                [p for _, p in added],
            )

    async def mark_present(self, conn: Any, held: Mapping[str, tuple[str, int]]) -> int:
        """Record that the destination holds (etag, size) for these paths; rows that already
        say so are not written."""
        if not held:
            return 0
        paths = list(held)
        result: str = await conn.execute(
            "INSERT INTO replica_objects (destination, file_path, state, etag, size_bytes, gen)"
            " SELECT $1, p, 'present', e, s, 1 FROM unnest($2::text[], $3::text[], $4::bigint[])"
            " AS t(p, e, s)"
            " ON CONFLICT (destination, file_path) DO UPDATE SET state = 'present',"
            " etag = EXCLUDED.etag, size_bytes = EXCLUDED.size_bytes,"
            " gen = replica_objects.gen + 1, updated_at = now()"
            " WHERE (replica_objects.state, replica_objects.etag)"
            " IS DISTINCT FROM ('present', EXCLUDED.etag)",
            self.destination,
            paths,
            [held[p][0] for p in paths],
            [held[p][1] for p in paths],
        )
        return int(result.rsplit(" ", 1)[-1])

    async def mark_unreferenced(self, conn: Any, paths: Collection[str]) -> list[str]:
        """Paths among these that no SKU references any more: marked ``deleting``."""
        if not paths:
            return []
        rows = await conn.fetch(
            "UPDATE replica_objects o SET state = 'deleting', gen = o.gen + 1, updated_at = now()"
            " WHERE o.destination = $1 AND o.file_path = ANY($2) AND o.state = 'present'"
            " AND NOT EXISTS (SELECT 1 FROM replica_refs r"
            "  WHERE r.destination = o.destination AND r.file_path = o.file_path)"
            " RETURNING o.file_path",
            self.destination,
            list(paths),
        )
        return [r["file_path"] for r in rows]

    async def mark_extra(self, conn: Any, paths: Collection[str]) -> list[str]:
        """Destination objects no SKU references (found by verify): marked ``deleting``."""
        if not paths:
            return []
        rows = await conn.fetch(
            "INSERT INTO replica_objects AS o (destination, file_path, state, gen)"
            " SELECT $1, p, 'deleting', 1 FROM unnest($2::text[]) AS t(p)"
            " WHERE NOT EXISTS (SELECT 1 FROM replica_refs r"
            "  WHERE r.destination = $1 AND r.file_path = t.p)"
            " ON CONFLICT (destination, file_path) DO UPDATE SET state = 'deleting',"
            " gen = o.gen + 1, updated_at = now() WHERE o.state <> 'deleting'"
            " RETURNING o.file_path",
            self.destination,
            list(paths),
        )
        return [r["file_path"] for r in rows]

    async def set_versions(self, conn: Any, versions: Mapping[str, int]) -> None:
        if not versions:
            return
        await conn.execute(
            "INSERT INTO replica_skus (destination, sku, version)"
            " SELECT $1, s, v FROM unnest($2::text[], $3::bigint[]) AS t(s, v)"
            " ON CONFLICT (destination, sku) DO UPDATE SET version = EXCLUDED.version,"
            " updated_at = now() WHERE replica_skus.version < EXCLUDED.version",
            self.destination,
            list(versions),
            list(versions.values()),
        )

    # -- deletes after the commit ----------------------------------------------------------

    async def pending_deletes(self, conn: Any, limit: int) -> list[str]:
        rows = await conn.fetch(
            "SELECT file_path FROM replica_objects WHERE destination = $1 AND state = 'deleting'"
            " ORDER BY file_path LIMIT $2",
            self.destination,
            limit,
        )
        return [r["file_path"] for r in rows]

    async def count_pending(self, conn: Any) -> int:
        n = await conn.fetchval(
            "SELECT count(*) FROM replica_objects WHERE destination = $1 AND state = 'deleting'",
            self.destination,
        )
        return int(n or 0)

    async def try_lock_exclusive(self, conn: Any, paths: list[str]) -> list[str]:
        """The paths whose exclusive lock this transaction got without waiting."""
        rows = await conn.fetch(
            "SELECT p FROM unnest($1::text[], $2::bigint[]) AS t(p, k)"
            " WHERE pg_try_advisory_xact_lock(k)",
            paths,
            [lock_key(self.destination, p) for p in paths],
        )
        return [r["p"] for r in rows]

    async def finish_deletes(self, conn: Any, paths: list[str]) -> None:
        if paths:
            await conn.execute(
                "UPDATE replica_objects SET state = 'absent', etag = NULL, size_bytes = NULL,"
                " gen = gen + 1, updated_at = now()"
                " WHERE destination = $1 AND file_path = ANY($2) AND state = 'deleting'",
                self.destination,
                paths,
            )

    # -- what verify compares ----------------------------------------------------------------

    async def expected(self, conn: Any, path_prefix: str) -> dict[str, ObjectRow | None]:
        """Every path some SKU references (under the prefix), with what is recorded for it."""
        rows = await conn.fetch(
            "SELECT DISTINCT r.file_path, o.state, o.etag, o.gen FROM replica_refs r"
            " LEFT JOIN replica_objects o"
            "  ON o.destination = r.destination AND o.file_path = r.file_path"
            " WHERE r.destination = $1 AND starts_with(r.file_path, $2)",
            self.destination,
            path_prefix,
        )
        return {
            r["file_path"]: ObjectRow(r["state"], r["etag"], r["gen"]) if r["state"] else None
            for r in rows
        }
