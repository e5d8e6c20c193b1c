"""``STREAMER_ETAG_SOURCE=index``: ETags from the object index, S3 asked only on a miss.

The index (kept current from bucket notifications by ``streamer objects consume``) is read
beside the batch's state read, one statement for every key of the batch. Keys it does not
know, and keys a re-check asks about afresh, go to the S3 look-up (``auto``); what S3
said is recorded into the index, timed at the moment the look-up began, so a notification
of a later change still wins and an earlier one delivered late does not.

An entry marked deleted is a miss too: absence is confirmed with S3. The index learns of an
upload only when its notification is taken, and an upload re-checks no gallery when none
holds the path (an event whose object was missing stored no image), so trusting a recorded
404 would dead-letter a replay made right after uploading the missing objects again, and
the image would never be stored. Missing objects are the exception, so asking costs little.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import UTC, datetime

from streamer.errors import DependencyUnavailable
from streamer.gallery.etags import EtagSource
from streamer.gallery.metrics import GalleryMetrics
from streamer.gallery.state import ObjectInfo
from streamer.objectindex.records import OBSERVATION_SKEW, ObjectChange
from streamer.objectindex.store import read_objects, upsert_changes
from streamer.runtime import tracing
from streamer.runtime.database import Database

__all__ = ["IndexEtagSource"]

log = logging.getLogger(__name__)


class IndexEtagSource:
    def __init__(
        self,
        database: Database,
        bucket: str,
        fallback: EtagSource,
        *,
        metrics: GalleryMetrics | None = None,
    ) -> None:
        self.database = database
        self.bucket = bucket
        self.fallback = fallback
        self._hits = metrics.index_lookups.labels("hit") if metrics else None
        self._misses = metrics.index_lookups.labels("miss") if metrics else None
        self.hits = 0
        self.misses = 0

    async def lookup(
        self, keys: Collection[str], *, fresh: Collection[str] = ()
    ) -> dict[str, ObjectInfo | None]:
        wanted = set(keys)
        fresh_keys = wanted & set(fresh)
        async with self.database.acquire() as conn:
            rows = await read_objects(conn, self.bucket, wanted - fresh_keys)
        found: dict[str, ObjectInfo | None] = {}
        for key, row in rows.items():
            if not row.deleted and row.etag is not None:
                found[key] = ObjectInfo(row.etag, row.size or 0, row.content_type)
        misses = wanted - found.keys()
        tracing.annotate({"streamer.index.hits": len(found), "streamer.index.misses": len(misses)})
        self.hits += len(found)
        self.misses += len(misses)
        if self._hits is not None and self._misses is not None:
            self._hits.inc(len(found))
            self._misses.inc(len(misses))
        if misses:
            asked_at = datetime.now(UTC) - OBSERVATION_SKEW
            looked = await self.fallback.lookup(misses)
            found.update(looked)
            await self._record(looked, asked_at)
        return found

    async def _record(self, looked: dict[str, ObjectInfo | None], at: datetime) -> None:
        """Fill the index with what S3 said: a cache fill, so a failure costs only a warning."""
        changes = [
            ObjectChange(
                self.bucket,
                key,
                info is None,
                None if info is None else info.etag,
                None if info is None else info.size,
                at,
                content_type=None if info is None else info.content_type,
            )
            for key, info in looked.items()
        ]
        try:
            async with self.database.acquire() as conn, conn.transaction():
                await upsert_changes(conn, changes, source="lookup")
        except DependencyUnavailable as exc:
            log.warning("object index: %d look-ups not recorded: %s", len(changes), exc)

    async def close(self) -> None:
        await self.fallback.close()
