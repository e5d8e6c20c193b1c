"""The replicator's pure rules: image limit, newest record per SKU, when a path needs no request,
when the destination is identical, and how references change."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from streamer.contract.codec import Codec
from streamer.contract.errors import DecodeError, InvalidEvent
from streamer.errors import ConfigError
from streamer.replicate.event import GalleryState, decode_gallery
from streamer.replicate.handler import moved
from streamer.replicate.repository import lock_key
from streamer.replicate.rules import (
    Keyed,
    ObjectRow,
    ReplicaHead,
    is_identical,
    is_recorded,
    newest_per_sku,
    ref_change,
    select_images,
)
from streamer.replicate.settings import ReplicaSettings
from streamer.storage.settings import S3Settings

pytestmark = pytest.mark.unit


def gallery(sku: str = "S", version: int = 1, n: int = 3, deleted: bool = False) -> GalleryState:
    return GalleryState.model_validate(
        {
            "sku": sku,
            "version": version,
            "deleted": deleted,
            "images": [
                {"file_path": f"/a/{i}.jpg", "etag": f"e{i}", "size": 10, "position": i}
                for i in range(n)
            ],
        }
    )


@pytest.mark.parametrize(
    ("limit", "kept", "dropped"), [(None, 3, 0), (0, 0, 3), (1, 1, 2), (2, 2, 1), (5, 3, 0)]
)
def test_image_limit_keeps_the_first_by_position(
    limit: int | None, kept: int, dropped: int
) -> None:
    images, n = select_images(gallery(n=3), limit)
    assert [i.file_path for i in images] == [f"/a/{i}.jpg" for i in range(kept)]
    assert n == dropped


def test_a_deleted_product_wants_nothing() -> None:
    assert select_images(gallery(deleted=True), None) == ([], 0)


def test_the_newest_record_of_a_sku_stands_for_the_batch() -> None:
    items = [
        Keyed(gallery("A", 2), "a2"),
        Keyed(gallery("B", 1), "b1"),
        Keyed(gallery("A", 1), "a1-late"),
        Keyed(gallery("A", 2), "a2-again"),
    ]
    newest, superseded = newest_per_sku(items)
    assert {sku: k.item for sku, k in newest.items()} == {"A": "a2-again", "B": "b1"}
    assert sorted(k.item for k in superseded) == ["a1-late", "a2"]


def test_recorded_only_when_present_with_every_wanted_etag() -> None:
    assert is_recorded(ObjectRow("present", "e1", 3), {"e1"})
    assert not is_recorded(ObjectRow("present", "e1", 3), {"e2"})
    assert not is_recorded(ObjectRow("present", "e1", 3), {"e1", "e2"})
    assert not is_recorded(ObjectRow("deleting", "e1", 3), {"e1"})
    assert not is_recorded(None, {"e1"})


def test_identical_by_recorded_source_etag_or_single_part_etag() -> None:
    assert is_identical(ReplicaHead("abc-2", "src", 5), "src")
    assert not is_identical(ReplicaHead("src", "old", 5), "src"), "metadata wins over the ETag"
    assert is_identical(ReplicaHead("src", None, 5), "src")
    assert not is_identical(ReplicaHead("src-2", None, 5), "src-2"), "multipart ETags prove nothing"
    assert not is_identical(None, "src")


def test_refs_released_added_and_kept_for_failed_images() -> None:
    change = ref_change({"/a", "/b", "/c"}, ["/a", "/b", "/d", "/e"], {"/b": 1, "/e": 1, "/c": 1})
    assert change.refs == {"/a", "/b", "/d"}
    assert change.added == {"/d"}
    assert change.removed == {"/c"}, (
        "an image not wanted any more is released, failed elsewhere or not"
    )


def test_a_path_moved_when_its_generation_changed_or_it_is_being_deleted() -> None:
    assert not moved(None, None)
    assert not moved(ObjectRow("present", "e", 2), ObjectRow("present", "e", 2))
    assert moved(None, ObjectRow("present", "e", 1))
    assert moved(ObjectRow("present", "e", 2), ObjectRow("present", "e", 3))
    assert moved(ObjectRow("deleting", "e", 2), ObjectRow("deleting", "e", 2))


def outcome_record(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "sku": "S",
        "version": 3,
        "occurred_at": datetime.now(UTC),
        "deleted": False,
        "source_event_ids": [],
        "request_ids": [],
        "images": [
            {
                "file_path": "/a/1.jpg",
                "etag": "e1",
                "size": 3,
                "content_type": "image/jpeg",
                "label": None,
                "position": 1,
                "disabled": False,
                "roles": [],
                "content_changed": True,
            }
        ],
        "removed": [],
        "content_changed": ["/a/1.jpg"],
    }
    record.update(changes)
    return record


def test_gallery_updated_decodes_with_the_contract_codec() -> None:
    codec = Codec()
    value = codec.encode_outcome(outcome_record(), topic="t")
    state = decode_gallery(codec, value)
    assert (state.sku, state.version, [i.file_path for i in state.images]) == ("S", 3, ["/a/1.jpg"])


def test_other_records_and_unsafe_paths_are_refused_with_a_reason() -> None:
    codec = Codec()
    with pytest.raises(DecodeError) as wrong:
        decode_gallery(codec, b"\x00garbage")
    assert wrong.value.reason == "unknown_schema_id"
    bad = outcome_record()
    bad["images"][0]["file_path"] = "/a/../../etc/passwd"
    with pytest.raises(InvalidEvent, match="not a normalised file path"):
        decode_gallery(codec, codec.encode_outcome(bad, topic="t"))


def test_settings_name_the_destination_and_require_a_bucket() -> None:
    source = S3Settings(s3_endpoint_url="http://s3:9000", s3_bucket="catalog")
    with pytest.raises(ConfigError, match="STREAMER_REPLICA_BUCKET"):
        ReplicaSettings().bucket()
    same = ReplicaSettings(replica_bucket="cdn", replica_prefix="/img/")
    assert same.server_side
    assert same.destination(source) == "http://s3:9000/cdn/img"
    other = ReplicaSettings(
        replica_bucket="cdn",
        replica_endpoint_url="http://r2/",
        replica_access_key_id="r2-key",
        replica_secret_access_key="s3cr3t-value",
    )
    assert not other.server_side
    assert other.store(source).s3_endpoint_url == "http://r2/"
    assert other.store(source).s3_secret_access_key is not None
    assert "s3cr3t-value" not in repr(other), "the replica secret never shows"


def test_lock_keys_are_stable_and_per_destination() -> None:
    assert lock_key("d", "/a") == lock_key("d", "/a")
    assert lock_key("d", "/a") != lock_key("e", "/a")
    assert -(2**63) <= lock_key("d", "/a") < 2**63
