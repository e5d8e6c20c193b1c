"""Recognising a re-sync of the payload that made a stored gallery, before its images are
decoded. Pure: no I/O.

A re-sync publishes every SKU's gallery again under a new version and event id, most of
them as they are stored. A media event's ``mode`` and ``images`` are the bytes after its
common fields, so their digest (keyed with the writer schema and the rules the fold judges
images by) says whether the payload is the one that made the stored images
(``SkuState.gallery_digest``). Such an event is carried decoded up to its images
(``PendingMedia``) and the fold judges it against the objects behind the stored images;
any other is decoded in full once the stored state is known, as any event is.
"""

from __future__ import annotations

import hashlib

from streamer.contract.codec import Codec
from streamer.contract.events import EventType
from streamer.contract.lean import LeanMedia, PendingMedia, lean_common
from streamer.contract.schemas import current_schemas
from streamer.gallery.fold import FoldRules, keys_in_play
from streamer.gallery.state import DIGEST_BYTES, NOTHING_STORED, SkuState

__all__ = ["DIGEST_RULES", "digest_key", "pending_media", "settle"]

# Changes whenever what a media payload's bytes decode to, or how the fold judges them,
# changes in code: a stored digest then no longer matches, and the payload is decoded.
DIGEST_RULES = "gallery-digest-1"


def digest_key(rules: FoldRules) -> bytes | None:
    """What a media payload's digest is keyed with: the writer schema and the rules the fold
    judges images by, so a digest stored under other settings never matches. None where the
    payload alone cannot say what the images become (producer ETags trusted: the fold would
    not use the objects looked up; gallery sync off)."""
    if rules.image_limit == 0 or not rules.verify_producer_etag:
        return None
    media = current_schemas()[EventType.MEDIA.value]
    tag = f"{DIGEST_RULES}|{media.fingerprint.hex()}|{rules.max_image_bytes}|{rules.image_limit}"
    return hashlib.blake2b(tag.encode(), digest_size=32).digest()


def pending_media(
    codec: Codec, value: bytes | None, key: bytes | None, digest_key: bytes | None
) -> PendingMedia | None:
    """The message as a media event decoded up to its images, when it is one written with
    the current schema whose common fields the fast path vouches for, under its SKU as key;
    else None (the message is decoded in full, and judged as before)."""
    if digest_key is None or value is None or key is None:
        return None
    found = codec.media_prefix(value)
    if found is None:
        return None
    record, offset = found
    common = lean_common(record)
    if common is None:
        return None
    try:
        if key.decode("utf-8").strip() != common[1]:
            return None
    except UnicodeDecodeError:
        return None
    digest = hashlib.blake2b(
        memoryview(value)[offset:], digest_size=DIGEST_BYTES, key=digest_key
    ).digest()
    return PendingMedia(*common, digest=digest, value=value, decoder=codec.decode_gallery_input)


def settle(
    event: PendingMedia, stored: SkuState, rules: FoldRules
) -> tuple[PendingMedia | LeanMedia, set[str]]:
    """The event as the fold gets it, once ``stored`` is read, and the paths whose objects it
    may need: a re-sync of the stored payload stays pending (its objects are the stored
    images'); any other is decoded in full (raising what ``Codec.decode_gallery_input``
    raises, for a dead letter)."""
    if stored.gallery_digest == event.digest:
        return event, set(stored.images)
    full = event.full()
    return full, keys_in_play(NOTHING_STORED, [full], rules)
