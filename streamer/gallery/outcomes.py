"""``GalleryUpdated``: the outcome record of a SKU whose gallery changed in a batch. Pure."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from streamer.contract.lean import GalleryInput
from streamer.gallery.diff import SkuDiff
from streamer.gallery.state import SkuState, display_order

__all__ = ["gallery_updated"]


def gallery_updated(d: SkuDiff, final: SkuState, applied: Iterable[GalleryInput]) -> dict[str, Any]:
    """The Avro record for ``d``; its event_id is derived from the applied source events,
    so a batch committed twice (at least once) publishes the same id twice."""
    applied = list(applied)
    changed = {img.file_path for img in d.content_changes} | {img.file_path for img in d.inserts}
    ids = sorted(e.event_id for e in applied)
    return {
        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"streamer:{d.sku}:{','.join(ids)}")),
        "sku": d.sku,
        "version": max(final.product_version, final.gallery_version, 0),
        "occurred_at": datetime.now(UTC),
        "deleted": final.deleted,
        "source_event_ids": ids,
        "request_ids": sorted({e.request_id for e in applied if e.request_id}),
        "images": [
            {
                "file_path": img.file_path,
                "etag": img.etag,
                "size": img.size,
                "content_type": img.content_type,
                "label": img.label,
                "position": img.position,
                "disabled": img.disabled,
                "roles": list(img.roles),
                "content_changed": img.file_path in changed,
            }
            for img in sorted(final.images.values(), key=display_order)
        ],
        "removed": list(d.removes),
        "content_changed": sorted(changed),
    }
