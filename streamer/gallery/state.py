"""The values the gallery rules work on: what S3 says about an object, and a SKU's stored state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "DIGEST_BYTES",
    "NOTHING_STORED",
    "ObjectInfo",
    "SeenEvent",
    "SkuState",
    "StoredImage",
    "display_order",
]

DIGEST_BYTES = 16  # a media payload's digest (SkuState.gallery_digest)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What S3 said about one object (HEAD or ListObjectsV2)."""

    etag: str
    size: int
    content_type: str | None = None


class StoredImage(NamedTuple):
    """An image as stored. A named tuple: a batch reads thousands, and it builds in a third
    of a frozen dataclass's time."""

    file_path: str
    etag: str
    size: int
    content_type: str | None
    label: str | None
    position: int | None
    disabled: bool
    roles: tuple[str, ...]
    content_version: int = 1


def display_order(image: StoredImage) -> tuple[bool, int, str]:
    """Position first (unpositioned last), then path: the order a gallery is shown and exported in."""
    return (image.position is None, image.position or 0, image.file_path)


@dataclass(frozen=True, slots=True)
class SkuState:
    sku: str
    product_version: int = -1
    gallery_version: int = -1
    deleted: bool = False
    name: str | None = None
    enabled: bool = True
    images: Mapping[str, StoredImage] = field(default_factory=dict)
    exists: bool = False
    # The products row's version when read (0: no row): its write is conditional on it, so
    # a SKU written by someone else since this batch read it is planned again, never
    # overwritten (its product and media partitions may belong to two workers).
    row_version: int = 0
    # The event_id of the event that set each version ("": not known, a row written before
    # they were kept): the first event to reach a version keeps it, so a tie with another
    # event is stale whatever arrives later.
    product_event_id: str = ""
    gallery_event_id: str = ""
    # The digest of the media payload that made the images as they are (``LeanMedia.digest``),
    # when applying that payload again changes nothing unless objects changed: every image
    # it listed valid, kept, and the only ones stored. None: no such payload.
    gallery_digest: bytes | None = None

    def stored_as(self, row_version: int) -> SkuState:
        """This state with the products row's version it is stored under. Built directly:
        ``dataclasses.replace`` costs several times as much, once per SKU of a re-sync."""
        return SkuState(
            self.sku,
            self.product_version,
            self.gallery_version,
            self.deleted,
            self.name,
            self.enabled,
            self.images,
            self.exists,
            row_version,
            self.product_event_id,
            self.gallery_event_id,
            self.gallery_digest,
        )

    @property
    def product_key(self) -> tuple[int, str]:
        return (self.product_version, self.product_event_id)

    @property
    def gallery_key(self) -> tuple[int, str]:
        return (self.gallery_version, self.gallery_event_id)

    def same_content(self, other: SkuState) -> bool:
        """Equal in everything but the version numbers (and content versions, which follow
        the ETags): whether an event changed anything."""
        if (
            self.exists != other.exists
            or self.deleted != other.deleted
            or self.name != other.name
            or self.enabled != other.enabled
        ):
            return False
        mine, theirs = self.images, other.images
        if mine is theirs:
            return True
        if mine.keys() != theirs.keys():
            return False
        return all(_image_key(image) == _image_key(theirs[path]) for path, image in mine.items())


@dataclass(frozen=True, slots=True)
class SeenEvent:
    """An event id already owned: the fingerprint of the content it came with, and its outcome
    (``written``, ``partial`` or ``dead_lettered``; only those own an id)."""

    fingerprint: str | None
    outcome: str


def _image_key(image: StoredImage) -> tuple[object, ...]:
    return (
        image.etag,
        image.size,
        image.content_type,
        image.label,
        image.position,
        image.disabled,
        tuple(sorted(image.roles)),
    )


# A SKU with nothing stored: what the objects an event may need are named against before
# its SKU's state is read (a superset of those the fold will use).
NOTHING_STORED = SkuState("")
