"""Which galleries an object change concerns, and the re-check each gets. Pure: no I/O.

A gallery is re-checked when an object it uses now differs from what it stored: a new
ETag, or no object at all. Comparing with the gallery's stored ETag (not with what the
index held before) also catches a change whose earlier notifications the index never
saw, and asks nothing of galleries already up to date (a late duplicate, say).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from streamer.objectindex.records import ObjectChange

__all__ = ["Recheck", "file_path_of", "plan_rechecks", "recheck_record"]

SOURCE = "streamer-objects"


def file_path_of(prefix: str, key: str) -> str | None:
    """The gallery file path of an object key under ``prefix`` (the inverse of ``s3_key``),
    None for keys outside it."""
    prefix = prefix.strip("/")
    if not prefix:
        return "/" + key
    if not key.startswith(prefix + "/"):
        return None
    return key[len(prefix) :]


@dataclass(frozen=True)
class Recheck:
    sku: str
    file_paths: tuple[str, ...]
    occurred_at: datetime
    event_id: str


def _mark(change: ObjectChange, stored_etag: str, content_version: int) -> str:
    order = change.sequencer or change.event_time.isoformat()
    return (
        f"{change.bucket}/{change.key}@{change.etag or 'deleted'}@{order}"
        f" over {stored_etag}#{content_version}"
    )


def plan_rechecks(
    changes: Iterable[ObjectChange],
    galleries: Mapping[str, list[tuple[str, str, int]]],
    prefix: str,
) -> list[Recheck]:
    """One re-check per SKU whose stored images differ from the changed objects.

    ``galleries``: file path -> [(sku, stored etag, content_version)]. The event id is
    derived from the SKU, the changes and the stored images they differ from, so the same
    notification re-delivered to an unchanged gallery asks the same re-check (applied once),
    but one re-delivered after the gallery moved asks a new one. Without the stored image
    in the id, a notification whose first attempt published its re-check and then rolled
    back (a crash before COMMIT) came back after the gallery, re-checked once, had stored
    the old bytes again from the index that rollback left behind; the same id was a
    duplicate, and the gallery kept bytes no longer in the bucket.
    """
    by_sku: dict[str, list[tuple[str, ObjectChange, str, int]]] = {}
    for change in changes:
        path = file_path_of(prefix, change.key)
        if path is None:
            continue
        for sku, stored_etag, content_version in galleries.get(path, ()):
            if change.deleted or change.etag != stored_etag:
                by_sku.setdefault(sku, []).append((path, change, stored_etag, content_version))
    out: list[Recheck] = []
    for sku, hits in sorted(by_sku.items()):
        marks = ",".join(sorted(_mark(c, e, v) for _, c, e, v in hits))
        out.append(
            Recheck(
                sku=sku,
                file_paths=tuple(sorted({p for p, _, _, _ in hits})),
                occurred_at=max(c.event_time for _, c, _, _ in hits),
                event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"streamer:recheck:{sku}:{marks}")),
            )
        )
    return out


def recheck_record(r: Recheck) -> dict[str, Any]:
    """The ``GalleryRecheck`` Avro record."""
    return {
        "event_id": r.event_id,
        "sku": r.sku,
        "occurred_at": r.occurred_at,
        "source": SOURCE,
        "file_paths": list(r.file_paths),
    }
