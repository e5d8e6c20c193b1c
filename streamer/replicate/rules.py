"""The replicator's rules, free of I/O: which images a destination holds, what a batch must do.

- A SKU's newest ``GalleryUpdated`` in a batch stands for all of them (each carries the whole
  resulting gallery); one older than the version already applied for the SKU is stale.
- The image limit keeps the first N images by position (the record lists them in display
  order): ``None`` all, ``0`` replication off, ``N`` the first N.
- What a SKU references at the destination is what it wants there, plus the images it
  already referenced whose copy failed this time (a missing source object never deletes the
  copy another event made); what it referenced before and no longer does is released.
- A path needs no request when the replicator's own record says the destination holds the
  ETag wanted. Otherwise the destination is identical when it holds the source's current
  bytes: its ``streamer-source-etag`` metadata says so, or its own ETag equals the source's
  (a single-part object copied by any tool). Multipart ETags never equal the source's MD5,
  which is why the metadata is written on every copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from streamer.replicate.event import GalleryImage, GalleryState

__all__ = [
    "SOURCE_ETAG_KEY",
    "ObjectRow",
    "RefChange",
    "ReplicaHead",
    "is_identical",
    "is_recorded",
    "newest_per_sku",
    "ref_change",
    "select_images",
]

SOURCE_ETAG_KEY = "streamer-source-etag"
T = TypeVar("T")


@dataclass(frozen=True)
class ObjectRow:
    """What the replicator recorded for one destination path."""

    state: str  # present | deleting | absent
    etag: str | None
    gen: int


@dataclass(frozen=True)
class ReplicaHead:
    """A destination object as HEAD shows it."""

    etag: str
    source_etag: str | None
    size: int


@dataclass(frozen=True)
class Keyed(Generic[T]):
    gallery: GalleryState
    item: T


def newest_per_sku(items: Iterable[Keyed[T]]) -> tuple[dict[str, Keyed[T]], list[Keyed[T]]]:
    """The newest record per SKU (the later one on equal versions), and the superseded rest."""
    newest: dict[str, Keyed[T]] = {}
    superseded: list[Keyed[T]] = []
    for keyed in items:
        sku = keyed.gallery.sku
        held = newest.get(sku)
        if held is None or keyed.gallery.version >= held.gallery.version:
            if held is not None:
                superseded.append(held)
            newest[sku] = keyed
        else:
            superseded.append(keyed)
    return newest, superseded


def select_images(gallery: GalleryState, limit: int | None) -> tuple[list[GalleryImage], int]:
    """The images the destination should hold for this gallery, and how many the limit drops."""
    images = [] if gallery.deleted else list(gallery.images)
    if limit is None or len(images) <= limit:
        return images, 0
    return images[:limit], len(images) - limit


def is_recorded(row: ObjectRow | None, etags: Iterable[str]) -> bool:
    """The replicator's record says the destination holds every ETag wanted (no request needed)."""
    wanted = set(etags)
    return row is not None and row.state == "present" and wanted == {row.etag}


def is_identical(replica: ReplicaHead | None, source_etag: str) -> bool:
    if replica is None:
        return False
    if replica.source_etag is not None:
        return replica.source_etag == source_etag
    return replica.etag == source_etag and "-" not in replica.etag


@dataclass(frozen=True)
class RefChange:
    refs: frozenset[str]
    added: frozenset[str]
    removed: frozenset[str]


def ref_change(
    old: Iterable[str], wanted: Sequence[str], failed: Mapping[str, object]
) -> RefChange:
    """The SKU's references after this change; a failed image keeps a reference it had."""
    before = frozenset(old)
    want = frozenset(wanted)
    after = frozenset(p for p in want if p not in failed or p in before)
    return RefChange(after, after - before, before - after)
