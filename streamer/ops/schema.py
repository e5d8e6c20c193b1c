"""The database schema of every part of streamer, in the order it is applied."""

from __future__ import annotations

from streamer.jobs import migrations
from streamer.runtime.migrations import migrate

__all__ = ["migrate_all"]


async def migrate_all(dsn: str) -> list[str]:
    """Create or upgrade every table (the runtime's, then each job's as ``streamer.jobs``
    lists them); idempotent and safe to run from several processes."""
    return await migrate(dsn, migrations())
