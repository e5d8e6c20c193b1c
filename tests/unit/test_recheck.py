"""A gallery re-check (an object changed in the bucket): the fold applies what the objects say
now, versions untouched; the codec carries it on the media topic."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from streamer.contract.codec import Codec
from streamer.contract.errors import InvalidEvent
from streamer.contract.lean import LeanRecheck
from streamer.gallery.diff import diff
from streamer.gallery.fold import EventOutcome, FoldRules, fold, keys_in_play
from streamer.gallery.outcomes import gallery_updated
from streamer.gallery.state import ObjectInfo, SkuState, StoredImage

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 24, tzinfo=UTC)
RULES = FoldRules(max_image_bytes=1000)


def stored(path: str, etag: str, version: int = 1) -> StoredImage:
    return StoredImage(path, etag, 10, "image/jpeg", "l", 1, False, ("image",), version)


STATE = SkuState(
    "S",
    product_version=5,
    gallery_version=7,
    images={"/a.jpg": stored("/a.jpg", "e1"), "/b.jpg": stored("/b.jpg", "e2")},
    exists=True,
    row_version=3,
)


def recheck(*paths: str) -> LeanRecheck:
    return LeanRecheck(str(uuid.uuid4()), "S", NOW, "streamer-objects", paths)


def test_an_overwritten_object_bumps_its_content_version_and_nothing_else() -> None:
    event = recheck("/a.jpg", "/gone-from-gallery.jpg")
    assert keys_in_play(SkuState(""), [event]) == {"/a.jpg", "/gone-from-gallery.jpg"}
    objects = {"/a.jpg": ObjectInfo("e9", 20, None), "/gone-from-gallery.jpg": None}
    result = fold(STATE, [event], objects, RULES)
    assert [r.outcome for r in result.results] == [EventOutcome.WRITTEN]
    a = result.state.images["/a.jpg"]
    assert (a.etag, a.size, a.content_version, a.content_type) == ("e9", 20, 2, None)
    assert (a.label, a.position, a.roles) == ("l", 1, ("image",))
    assert result.state.images["/b.jpg"] == STATE.images["/b.jpg"]
    assert (result.state.product_version, result.state.gallery_version) == (5, 7)
    d = diff(STATE, result.state)
    record = gallery_updated(d, result.state, [event])
    assert record["content_changed"] == ["/a.jpg"]
    assert record["version"] == 7
    assert record["source_event_ids"] == [event.event_id]


def test_an_unchanged_object_is_a_noop_and_a_deleted_one_is_object_missing() -> None:
    same = fold(STATE, [recheck("/b.jpg")], {"/b.jpg": ObjectInfo("e2", 10)}, RULES)
    assert [r.outcome for r in same.results] == [EventOutcome.NOOP]
    assert same.state.images is STATE.images
    gone = fold(STATE, [recheck("/b.jpg")], {"/b.jpg": None}, RULES)
    (result,) = gone.results
    assert (result.outcome, result.reason) == (EventOutcome.PARTIAL, "object_missing")
    assert gone.state.images == STATE.images  # kept, reported, as a media event's missing object
    assert gone.image_counts["object_missing"] == 1


def test_recheck_round_trips_through_the_codec_and_is_validated() -> None:
    codec = Codec()
    record = {
        "event_id": str(uuid.uuid4()),
        "sku": "S",
        "occurred_at": NOW,
        "source": "streamer-objects",
        "file_paths": ["a.jpg", "/a.jpg", "/b/c.jpg"],
    }
    raw = codec.encode_record(record, type_name="GalleryRecheck", topic="catalog.media.v1")
    event = codec.decode_gallery_input(raw)
    assert isinstance(event, LeanRecheck)
    assert event.file_paths == ("/a.jpg", "/b/c.jpg")
    with pytest.raises(InvalidEvent) as err:
        codec.decode_gallery_input(
            codec.encode_record(
                {**record, "file_paths": ["/../x"]},
                type_name="GalleryRecheck",
                topic="catalog.media.v1",
            )
        )
    assert err.value.reason == "invalid_recheck"
