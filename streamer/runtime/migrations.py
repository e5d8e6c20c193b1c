"""Schema migrations: the runtime's own tables first, then each job's, in the order given.

Each part keeps its ``.sql`` files in a package of its own (``streamer.runtime.sql``,
``streamer.gallery.sql``, ...), applied in file-name order and recorded under
``<part>/<file>`` in ``schema_migrations``. Every file is idempotent (``IF NOT
EXISTS``), and an advisory lock serialises processes migrating at the same time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources

from streamer.runtime.database import connect

__all__ = ["RUNTIME_MIGRATIONS", "migrate"]

RUNTIME_MIGRATIONS = "streamer.runtime.sql"
_LOCK = int.from_bytes(hashlib.sha256(b"streamer.migrations").digest()[:8], "big", signed=True)


def _files(package: str) -> list[tuple[str, str]]:
    folder = resources.files(package)
    part = package.removeprefix("streamer.").removesuffix(".sql")
    found = sorted((p.name, p) for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(f"{part}/{name.removesuffix('.sql')}", p.read_text()) for name, p in found]


async def migrate(dsn: str, packages: Sequence[str] = ()) -> list[str]:
    """Apply pending migrations of the runtime and the given packages; returns what was applied."""
    async with connect(dsn) as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for package in (RUNTIME_MIGRATIONS, *packages):
            for version, sql in _files(package):
                if version in done:
                    continue
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
                applied.append(version)
        return applied
