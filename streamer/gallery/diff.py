"""The minimal set of writes between a SKU's stored state and its folded state. Pure: no I/O."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from streamer.gallery.state import SkuState, StoredImage

__all__ = ["SkuDiff", "diff", "image_result_counts"]


@dataclass(frozen=True)
class SkuDiff:
    sku: str
    product: SkuState | None
    inserts: tuple[StoredImage, ...] = ()
    content_changes: tuple[StoredImage, ...] = ()
    metadata_changes: tuple[StoredImage, ...] = ()
    removes: tuple[str, ...] = ()
    unchanged: int = 0
    was_deleted: bool = False
    read_version: int = 0  # the products row's version when read; 0: there was none

    @property
    def images_changed(self) -> bool:
        return bool(self.inserts or self.content_changes or self.metadata_changes or self.removes)

    @property
    def gallery_changed(self) -> bool:
        """Images changed, or the product was deleted or resurrected (its gallery with it)."""
        return self.images_changed or (
            self.product is not None and self.product.deleted != self.was_deleted
        )

    @property
    def is_noop(self) -> bool:
        return self.product is None and not self.images_changed


def diff(stored: SkuState, folded: SkuState) -> SkuDiff:
    """The image rows that differ, and the products row when anything of it moved.

    A version-only change (a re-sync, an event whose images were all missing) writes
    no image row, but does write the products row: its versions are the watermark that
    tells a late, older event it is stale. Without it, what counts as stale would
    depend on where batches happen to split.
    """
    inserts: list[StoredImage] = []
    content: list[StoredImage] = []
    metadata: list[StoredImage] = []
    removes: tuple[str, ...] = ()
    if folded.images is not stored.images:  # else the fold kept them as they were
        _compare(stored, folded, inserts, content, metadata)
        removes = tuple(sorted(p for p in stored.images if p not in folded.images))
    unchanged = len(folded.images) - len(inserts) - len(content) - len(metadata)
    images_change = bool(inserts or content or metadata or removes)
    product_change = (
        (folded.exists and not stored.exists)
        or folded.deleted != stored.deleted
        or folded.name != stored.name
        or folded.enabled != stored.enabled
        or folded.product_version != stored.product_version
        or folded.gallery_version != stored.gallery_version
        or folded.product_event_id != stored.product_event_id
        or folded.gallery_event_id != stored.gallery_event_id
        or folded.gallery_digest != stored.gallery_digest
    )
    return SkuDiff(
        sku=folded.sku,
        product=folded if (product_change or images_change) else None,
        inserts=tuple(sorted(inserts, key=lambda i: i.file_path)),
        content_changes=tuple(sorted(content, key=lambda i: i.file_path)),
        metadata_changes=tuple(sorted(metadata, key=lambda i: i.file_path)),
        removes=removes,
        unchanged=unchanged,
        was_deleted=stored.deleted,
        read_version=stored.row_version,
    )


def _compare(
    stored: SkuState,
    folded: SkuState,
    inserts: list[StoredImage],
    content: list[StoredImage],
    metadata: list[StoredImage],
) -> None:
    for path, image in folded.images.items():
        old = stored.images.get(path)
        if old is None:
            inserts.append(image)
        elif old.etag != image.etag:
            content.append(image)
        elif old != image:
            metadata.append(image)


def image_result_counts(d: SkuDiff) -> Counter[str]:
    counts: Counter[str] = Counter()
    for result, n in (
        ("added", len(d.inserts)),
        ("content_changed", len(d.content_changes)),
        ("metadata_changed", len(d.metadata_changes)),
        ("removed", len(d.removes)),
        ("unchanged", d.unchanged),
    ):
        if n:
            counts[result] = n
    return counts
