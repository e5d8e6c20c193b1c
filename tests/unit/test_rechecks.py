"""Which galleries an object change concerns: by path under the prefix, and only where the
stored image differs from what the bucket now holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from streamer.objectindex.records import ObjectChange
from streamer.objects.rechecks import file_path_of, plan_rechecks, recheck_record
from streamer.storage.keys import s3_key

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 24, tzinfo=UTC)


@pytest.mark.parametrize("prefix", ["media/catalog/product", "/media/", ""])
def test_file_path_inverts_the_key_scheme(prefix: str) -> None:
    assert file_path_of(prefix, s3_key(prefix, "/a/b.jpg")) == "/a/b.jpg"


def test_keys_outside_the_prefix_name_no_path() -> None:
    assert file_path_of("media/catalog/product", "other/a.jpg") is None
    assert file_path_of("media/catalog/product", "media/catalog/productX/a.jpg") is None


def test_one_recheck_per_sku_where_the_stored_etag_differs() -> None:
    prefix = "m"
    changes = [
        ObjectChange("b", "m/a.jpg", False, "new", 3, T0, "02"),
        ObjectChange("b", "m/c.jpg", True, None, None, T0 + timedelta(seconds=1), "05"),
        ObjectChange("b", "outside/a.jpg", False, "x", 1, T0),
    ]
    galleries = {
        "/a.jpg": [("S1", "old", 1), ("S2", "new", 2), ("S3", "old", 1)],  # S2 has the new bytes
        "/c.jpg": [("S1", "c1", 1)],
    }
    rechecks = plan_rechecks(changes, galleries, prefix)
    assert [(r.sku, r.file_paths) for r in rechecks] == [
        ("S1", ("/a.jpg", "/c.jpg")),
        ("S3", ("/a.jpg",)),
    ]
    assert rechecks[0].occurred_at == T0 + timedelta(seconds=1)
    again = plan_rechecks(list(reversed(changes)), galleries, prefix)
    assert [r.event_id for r in again] == [r.event_id for r in rechecks]  # redelivery: same ids
    later = plan_rechecks(
        [ObjectChange("b", "m/a.jpg", False, "newer", 3, T0, "03")], galleries, prefix
    )
    assert later[0].event_id != rechecks[1].event_id
    assert recheck_record(rechecks[1])["file_paths"] == ["/a.jpg"]


def test_a_redelivered_change_asks_a_new_recheck_once_the_gallery_moved() -> None:
    """Found by the chaos campaign: the objects job published a re-check, crashed before
    COMMIT (the index kept the old ETag), the gallery applied the re-check (new bytes), then
    an event read the old ETag from the index and stored the old bytes again. The
    notification came back: its re-check must not be the first one's duplicate."""
    change = ObjectChange("b", "m/a.jpg", False, "new", 3, T0)
    first = plan_rechecks([change], {"/a.jpg": [("S1", "old", 1)]}, "m")
    same = plan_rechecks([change], {"/a.jpg": [("S1", "old", 1)]}, "m")
    moved = plan_rechecks([change], {"/a.jpg": [("S1", "old", 3)]}, "m")
    assert [r.event_id for r in same] == [r.event_id for r in first]
    assert [r.sku for r in moved] == ["S1"]
    assert moved[0].event_id != first[0].event_id
