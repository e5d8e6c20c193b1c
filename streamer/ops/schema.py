"""The database schema of every part of streamer, in the order it is applied."""

from __future__ import annotations

from streamer.runtime.migrations import migrate

__all__ = ["JOB_MIGRATIONS", "migrate_all"]

# The runtime's own tables come first (``migrate`` applies them); then each job's.
JOB_MIGRATIONS = (
    "streamer.gallery.sql",
    "streamer.tracking.sql",
    "streamer.replicate.sql",
    "streamer.objectindex.sql",
    "streamer.api.sql",
)


async def migrate_all(dsn: str) -> list[str]:
    """Create or upgrade every table; idempotent and safe to run from several processes."""
    return await migrate(dsn, JOB_MIGRATIONS)
