"""The gallery rules of DESIGN.md, one named case per rule, without servers."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.contract.events import MediaGalleryChanged, ProductChanged
from streamer.contract.lean import LeanEvent, lean_fingerprint, lean_of
from streamer.gallery import fold as fold_module
from streamer.gallery.diff import diff, image_result_counts
from streamer.gallery.fold import EventOutcome, FoldRules, fold, fold_batch, keys_in_play
from streamer.gallery.state import ObjectInfo, SeenEvent, SkuState, StoredImage

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, tzinfo=UTC)
RULES = FoldRules(max_image_bytes=1000)


def media(
    version: int, images: list[dict[str, Any]], mode: str = "UPSERT", event_id: str | None = None
) -> LeanEvent:
    """A media event as the consumer carries it (validated by the model, then made lean)."""
    return lean_of(
        MediaGalleryChanged.model_validate(
            {
                "event_id": event_id or str(uuid.uuid4()),
                "sku": "S",
                "version": version,
                "occurred_at": NOW,
                "source": "t",
                "mode": mode,
                "images": images,
            }
        )
    )


def product(
    version: int, op: str = "UPSERT", name: str | None = "n", event_id: str | None = None
) -> LeanEvent:
    return lean_of(
        ProductChanged.model_validate(
            {
                "event_id": event_id or str(uuid.uuid4()),
                "sku": "S",
                "version": version,
                "occurred_at": NOW,
                "source": "t",
                "op": op,
                "name": name,
            }
        )
    )


def obj(etag: str = "e1", size: int = 10) -> ObjectInfo:
    return ObjectInfo(etag=etag, size=size, content_type="image/jpeg")


OBJECTS = {f"/{c}.jpg": obj(f"etag-{c}") for c in "abcd"}


def stored(
    path: str, etag: str | None = None, roles: tuple[str, ...] = (), **kw: Any
) -> StoredImage:
    values = {
        "file_path": path,
        "etag": etag or f"etag-{path[1]}",
        "size": 10,
        "content_type": "image/jpeg",
        "label": None,
        "position": None,
        "disabled": False,
        "roles": roles,
        "content_version": 1,
    }
    values.update(kw)
    return StoredImage(**values)


def state(*images: StoredImage, version: int = 1, **kw: Any) -> SkuState:
    return SkuState(
        sku="S",
        product_version=kw.pop("product_version", version),
        gallery_version=version,
        images={i.file_path: i for i in images},
        exists=True,
        **kw,
    )


def run(start: SkuState, events: list, objects=OBJECTS, rules=RULES):
    result = fold(start, events, objects, rules)
    return result, diff(start, result.state)


def test_first_sync_inserts_every_image_with_its_etag() -> None:
    result, d = run(
        SkuState(sku="S"),
        [media(1, [{"file_path": "a.jpg", "roles": ["base"]}, {"file_path": "/b.jpg"}])],
    )
    assert result.results[0].outcome is EventOutcome.WRITTEN
    assert [i.file_path for i in d.inserts] == ["/a.jpg", "/b.jpg"]
    assert d.inserts[0].etag == "etag-a" and d.inserts[0].roles == ("image",)
    assert d.product is not None and d.product.gallery_version == 1
    assert image_result_counts(d) == {"added": 2}
    assert result.image_counts == {"added": 2}


def test_identical_resend_is_a_noop_with_no_writes() -> None:
    event = media(1, [{"file_path": "/a.jpg", "roles": ["image"]}])
    start = state(stored("/a.jpg", roles=("image",)), gallery_event_id=event.event_id)
    result, d = run(start, [event])
    assert result.results[0].outcome is EventOutcome.NOOP
    assert d.is_noop


def test_newer_version_same_content_writes_no_image_only_the_version_watermark() -> None:
    """A re-sync changes nothing visible, but its version must be stored: otherwise a late,
    older event would be applied over it (found by the chaos campaign)."""
    start = state(stored("/a.jpg", roles=("image",)))
    result, d = run(start, [media(5, [{"file_path": "/a.jpg", "roles": ["image"]}])])
    assert result.results[0].outcome is EventOutcome.NOOP
    assert not d.images_changed and not d.gallery_changed
    assert d.product is not None and d.product.gallery_version == 5
    late, _ = run(result.state, [media(3, [{"file_path": "/b.jpg"}])])
    assert late.results[0].outcome is EventOutcome.STALE


def test_new_etag_is_a_content_change_and_bumps_content_version() -> None:
    start = state(stored("/a.jpg", etag="old"))
    _result, d = run(start, [media(2, [{"file_path": "/a.jpg"}])])
    assert [i.content_version for i in d.content_changes] == [2]
    assert image_result_counts(d) == {"content_changed": 1}


def test_same_etag_new_label_is_a_metadata_change() -> None:
    start = state(stored("/a.jpg", label="old"))
    _, d = run(start, [media(2, [{"file_path": "/a.jpg", "label": "new"}])])
    assert [(i.label, i.content_version) for i in d.metadata_changes] == [("new", 1)]
    assert not d.content_changes


def test_upsert_keeps_unlisted_images() -> None:
    _, d = run(state(stored("/a.jpg"), stored("/b.jpg")), [media(2, [{"file_path": "/c.jpg"}])])
    assert not d.removes and [i.file_path for i in d.inserts] == ["/c.jpg"]


def test_replace_removes_unlisted_images() -> None:
    _, d = run(
        state(stored("/a.jpg"), stored("/b.jpg")), [media(2, [{"file_path": "/b.jpg"}], "REPLACE")]
    )
    assert d.removes == ("/a.jpg",)


def test_replace_keeps_a_listed_image_whose_object_is_missing() -> None:
    start = state(stored("/a.jpg"), stored("/x.jpg", etag="x"))
    result, d = run(start, [media(2, [{"file_path": "/x.jpg"}], "REPLACE")])
    assert result.results[0].outcome is EventOutcome.PARTIAL
    assert d.removes == ("/a.jpg",)


def test_stale_media_event_is_skipped() -> None:
    start = state(stored("/a.jpg"), version=5)
    result, d = run(start, [media(4, [{"file_path": "/b.jpg"}], "REPLACE")])
    assert result.results[0].outcome is EventOutcome.STALE
    assert d.is_noop


def test_equal_version_is_applied_again_idempotently() -> None:
    start = state(stored("/a.jpg"), version=5)
    result, _ = run(start, [media(5, [{"file_path": "/a.jpg"}])])
    assert result.results[0].outcome is EventOutcome.NOOP


FIRST, SECOND = "f0000000-0000-4000-8000-000000000000", "10000000-0000-4000-8000-000000000000"


def test_the_first_event_to_reach_a_version_keeps_it() -> None:
    """Two events with one version: the first keeps it and the second is stale, whatever
    their ids; the first again is a duplicate."""
    first = media(5, [{"file_path": "/a.jpg"}], "REPLACE", event_id=FIRST)
    second = media(5, [{"file_path": "/b.jpg"}], "REPLACE", event_id=SECOND)
    result, _ = run(state(stored("/c.jpg"), version=1), [first, second, first])
    assert [r.outcome for r in result.results] == [
        EventOutcome.WRITTEN,
        EventOutcome.STALE,
        EventOutcome.DUPLICATE,
    ]
    assert set(result.state.images) == {"/a.jpg"}
    assert result.state.gallery_key == (5, FIRST)


def test_a_product_version_tie_goes_to_the_first() -> None:
    events = [product(5, name="first", event_id=SECOND), product(5, name="then", event_id=FIRST)]
    result, d = run(state(version=1), events)
    assert result.state.name == "first"
    assert d.product is not None and d.product.product_key == (5, SECOND)


def test_a_re_sent_no_op_event_does_not_undo_the_event_that_tied_with_it() -> None:
    """Regression: equal versions were applied in arrival order, and a no-op leaves no
    outcome row, so a no-op re-sent after a tying event was applied again and undid it: the
    state depended on whether a copy came back (and, for any event, on the retention)."""
    resync = product(5, name="old", event_id=FIRST)
    rename = product(5, name="new", event_id=SECOND)
    start = state(version=1, name="old")
    once, _ = run(start, [resync, rename])
    again, _ = run(start, [resync, rename, resync])
    assert [r.outcome for r in again.results] == [
        EventOutcome.NOOP,
        EventOutcome.STALE,
        EventOutcome.NOOP,
    ]
    assert once.state == again.state and again.state.name == "old"


def test_a_version_set_by_an_unknown_event_is_taken_over_once() -> None:
    """A row stored before versions kept their event: the next event with that version takes
    it over (a version-only write, the watermark), and another one after it is stale."""
    start = state(stored("/a.jpg"), version=5)
    takeover = media(5, [{"file_path": "/a.jpg"}], event_id=FIRST)
    result, d = run(start, [takeover, media(5, [{"file_path": "/b.jpg"}], event_id=SECOND)])
    assert [r.outcome for r in result.results] == [EventOutcome.NOOP, EventOutcome.STALE]
    assert not d.images_changed and d.product is not None
    assert d.product.gallery_key == (5, FIRST)


def test_delete_removes_the_gallery_and_an_older_media_event_after_it_is_stale() -> None:
    start = state(stored("/a.jpg"), version=1)
    result, d = run(start, [product(10, "DELETE"), media(9, [{"file_path": "/b.jpg"}])])
    assert [r.outcome for r in result.results] == [EventOutcome.WRITTEN, EventOutcome.STALE]
    assert d.removes == ("/a.jpg",) and d.product is not None and d.product.deleted


def test_newer_media_event_after_delete_resurrects() -> None:
    start = state(version=10, deleted=True)
    result, d = run(start, [media(11, [{"file_path": "/a.jpg"}])])
    assert result.state.deleted is False and [i.file_path for i in d.inserts] == ["/a.jpg"]


def test_product_upsert_after_delete_resurrects() -> None:
    result, _ = run(state(version=10, deleted=True), [product(11, name="back")])
    assert result.state.deleted is False and result.state.name == "back"


def test_stale_product_event_is_skipped() -> None:
    result, d = run(state(product_version=10, version=1), [product(9, name="old")])
    assert result.results[0].outcome is EventOutcome.STALE and d.is_noop


def test_role_last_claim_wins_within_a_payload() -> None:
    result, _ = run(
        SkuState(sku="S"),
        [
            media(
                1,
                [
                    {"file_path": "/a.jpg", "roles": ["image", "thumbnail"]},
                    {"file_path": "/b.jpg", "roles": ["base"]},
                ],
            )
        ],
    )
    images = result.state.images
    assert images["/a.jpg"].roles == ("thumbnail",) and images["/b.jpg"].roles == ("image",)


def test_roles_are_owned_by_the_payload_and_move_between_images() -> None:
    start = state(stored("/a.jpg", roles=("image", "small_image")), stored("/b.jpg"))
    result, d = run(start, [media(2, [{"file_path": "/b.jpg", "roles": ["image"]}])])
    assert result.state.images["/a.jpg"].roles == () and result.state.images["/b.jpg"].roles == (
        "image",
    )
    assert {i.file_path for i in d.metadata_changes} == {"/a.jpg", "/b.jpg"}


def test_roles_are_left_alone_when_any_image_is_invalid() -> None:
    start = state(stored("/a.jpg", roles=("image",)))
    result, _ = run(
        start,
        [media(2, [{"file_path": "/b.jpg", "roles": ["image"]}, {"file_path": "/missing.jpg"}])],
    )
    assert result.state.images["/a.jpg"].roles == ("image",)
    assert result.state.images["/b.jpg"].roles == ()
    assert result.results[0].outcome is EventOutcome.PARTIAL


@pytest.mark.parametrize(
    ("image", "objects", "reason"),
    [
        pytest.param({"file_path": "/missing.jpg"}, OBJECTS, "object_missing", id="missing-object"),
        pytest.param(
            {"file_path": "/big.jpg"},
            {**OBJECTS, "/big.jpg": obj(size=5000)},
            "object_too_large",
            id="oversized-object",
        ),
        pytest.param({"file_path": "../up.jpg"}, OBJECTS, "invalid_file_path", id="path-traversal"),
    ],
)
def test_invalid_image_is_partial_and_valid_images_still_apply(image, objects, reason) -> None:
    result, d = run(SkuState(sku="S"), [media(1, [{"file_path": "/a.jpg"}, image])], objects)
    r = result.results[0]
    assert r.outcome is EventOutcome.PARTIAL and r.reason == reason
    assert [i.file_path for i in d.inserts] == ["/a.jpg"]
    assert result.image_counts[reason] == 1


def test_producer_etag_is_verified_against_s3() -> None:
    result, d = run(
        SkuState(sku="S"), [media(1, [{"file_path": "/a.jpg", "etag": "producer-says"}])]
    )
    assert d.inserts[0].etag == "etag-a" and result.image_counts["etag_mismatch"] == 1


def test_producer_etag_is_trusted_when_verification_is_off() -> None:
    rules = FoldRules(verify_producer_etag=False)
    events = [media(1, [{"file_path": "/z.jpg", "etag": "trusted"}])]
    assert keys_in_play(SkuState(sku="S"), events, rules) == set()
    _result, d = run(SkuState(sku="S"), events, {}, rules)
    assert d.inserts[0].etag == "trusted"


def test_unknown_roles_are_ignored_and_counted() -> None:
    result, _ = run(
        SkuState(sku="S"), [media(1, [{"file_path": "/a.jpg", "roles": ["hero", "base"]}])]
    )
    assert result.unknown_roles == 1 and result.state.images["/a.jpg"].roles == ("image",)


@pytest.mark.parametrize(
    ("limit", "kept", "dropped"),
    [
        (0, [], 3),
        (1, ["/a.jpg"], 2),
        (2, ["/a.jpg", "/b.jpg"], 1),
        (None, ["/a.jpg", "/b.jpg", "/c.jpg"], 0),
    ],
)
def test_image_limit(limit, kept, dropped) -> None:
    images = [{"file_path": f"/{c}.jpg", "position": i} for i, c in enumerate("abc")]
    result, _ = run(SkuState(sku="S"), [media(1, images)], rules=FoldRules(image_limit=limit))
    assert sorted(result.state.images) == kept
    assert result.image_counts["dropped_limit"] == dropped


def test_other_content_under_the_id_of_a_partial_event_is_dead_lettered() -> None:
    """Regression: a partial event's id let other content through (it was replayable), which
    then took the id over: the partial event's own replay was dead-lettered instead of
    completing it. The id stays the partial event's; its replay still applies."""
    event_id = str(uuid.uuid4())
    partial = media(1, [{"file_path": "/a.jpg"}, {"file_path": "/late.jpg"}], event_id=event_id)
    other = media(2, [{"file_path": "/b.jpg"}], event_id=event_id)
    first, _ = run(SkuState(sku="S"), [partial, other])
    assert [r.outcome for r in first.results] == [
        EventOutcome.PARTIAL,
        EventOutcome.DEAD_LETTERED,
    ]
    assert first.results[1].reason == "duplicate_event_id"
    assert set(first.state.images) == {"/a.jpg"}
    seen = {event_id: SeenEvent(first.results[0].fingerprint, "partial")}
    uploaded = {**OBJECTS, "/late.jpg": obj("etag-late")}
    replay = fold(first.state, [other, partial], uploaded, RULES, seen)
    assert [r.outcome for r in replay.results] == [
        EventOutcome.DEAD_LETTERED,
        EventOutcome.WRITTEN,
    ]
    assert set(replay.state.images) == {"/a.jpg", "/late.jpg"}


def test_duplicate_event_id_same_content_is_a_duplicate_different_content_is_dead_lettered() -> (
    None
):
    event_id = str(uuid.uuid4())
    first = media(1, [{"file_path": "/a.jpg"}], event_id=event_id)
    other = media(2, [{"file_path": "/b.jpg"}], event_id=event_id)
    result, _ = run(SkuState(sku="S"), [first, first, other])
    assert [r.outcome for r in result.results] == [
        EventOutcome.WRITTEN,
        EventOutcome.DUPLICATE,
        EventOutcome.DEAD_LETTERED,
    ]
    assert result.results[2].reason == "duplicate_event_id"


def test_folding_in_two_halves_equals_folding_whole() -> None:
    rng = random.Random(42)
    paths = [f"/{c}.jpg" for c in "abcd"]
    events: list = []
    version = 10
    for _ in range(200):
        version = max(0, version + rng.randint(-1, 3))
        if rng.random() < 0.1:
            events.append(product(version, rng.choice(["UPSERT", "DELETE"])))
            continue
        chosen = rng.sample([*paths, "/missing.jpg"], k=rng.randint(0, 3))
        images = [
            {
                "file_path": p,
                "position": rng.randint(0, 3),
                "roles": rng.sample(["base", "thumbnail"], k=rng.randint(0, 2)),
            }
            for p in chosen
        ]
        events.append(media(version, images, rng.choice(["UPSERT", "REPLACE"])))
    whole = fold(SkuState(sku="S"), events, OBJECTS, RULES)
    for cut in (1, 50, 100, 199):
        first = fold(SkuState(sku="S"), events[:cut], OBJECTS, RULES)
        second = fold(first.state, events[cut:], OBJECTS, RULES)
        assert second.state == whole.state
        assert [r.outcome for r in first.results + second.results] == [
            r.outcome for r in whole.results
        ]


# -- the no-op fast path never changes a result ----------------------------------------------

PATHS = ["/a.jpg", "/b.jpg", "/c.jpg"]
ROLE_NAMES = ["image", "small_image", "thumbnail"]
fast_objects = st.dictionaries(
    st.sampled_from(PATHS),
    st.builds(
        ObjectInfo,
        etag=st.sampled_from(["e1", "e2"]),
        size=st.sampled_from([0, 10, 20]),
        content_type=st.sampled_from([None, "image/jpeg", "image/png"]),
    ),
)
stored_images = st.builds(
    stored,
    st.sampled_from(PATHS),
    etag=st.sampled_from(["e1", "e2"]),
    roles=st.lists(st.sampled_from(ROLE_NAMES), unique=True, max_size=2).map(
        lambda r: tuple(sorted(r))
    ),
    label=st.sampled_from([None, "x"]),
    position=st.sampled_from([None, 0, 1]),
    size=st.sampled_from([10, 20]),
)
event_images = st.fixed_dictionaries(
    {
        "file_path": st.sampled_from([*PATHS, "/a/../x.jpg"]),
        "label": st.sampled_from([None, "x"]),
        "position": st.sampled_from([None, 0, 1]),
        "roles": st.lists(st.sampled_from([*ROLE_NAMES, "base"]), max_size=2),
        "disabled": st.booleans(),
    }
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(stored_images, max_size=3),
    st.lists(
        st.tuples(st.sampled_from(["UPSERT", "REPLACE"]), st.lists(event_images, max_size=3)),
        min_size=1,
        max_size=3,
    ),
    fast_objects,
    st.sampled_from([None, 1, 2]),
)
def test_the_noop_fast_path_gives_the_full_folds_result(
    start_images: list[StoredImage],
    payloads: list[tuple[str, list[dict[str, Any]]]],
    objects: dict[str, ObjectInfo],
    limit: int | None,
) -> None:
    start = state(*start_images)
    events = [media(2 + i, images, mode) for i, (mode, images) in enumerate(payloads)]
    rules = FoldRules(max_image_bytes=15, image_limit=limit)
    fast = fold(start, events, objects, rules)
    with patch.object(fold_module, "_unchanged", return_value=False):
        full = fold(start, events, objects, rules)
    assert fast.state.same_content(full.state)
    assert fast.state.gallery_version == full.state.gallery_version
    assert dict(fast.state.images) == dict(full.state.images)
    assert [r.outcome for r in fast.results] == [r.outcome for r in full.results]
    assert fast.image_counts == full.image_counts
    assert diff(start, fast.state) == diff(start, full.state)


def _role_names(roles: tuple[str, ...]) -> list[str]:
    return ["base" if r == "image" else r for r in roles]


@settings(max_examples=400, deadline=None)
@given(st.lists(stored_images, min_size=1, max_size=3), st.data())
def test_the_fast_path_on_re_syncs_that_echo_the_stored_state(
    start_images: list[StoredImage], data: st.DataObject
) -> None:
    """Events that repeat the stored images, some of them nudged: the fast path's home ground."""
    start = state(*start_images)
    listed = data.draw(st.lists(st.sampled_from(list(start.images)), unique=True, min_size=1))
    payload = []
    for path in listed:
        old = start.images[path]
        image = {
            "file_path": path,
            "label": old.label,
            "position": old.position,
            "disabled": old.disabled,
            "roles": _role_names(old.roles),
        }
        nudge = data.draw(st.sampled_from([None, None, "label", "position", "disabled", "roles"]))
        if nudge == "label":
            image["label"] = "other"
        elif nudge == "position":
            image["position"] = 9
        elif nudge == "disabled":
            image["disabled"] = not old.disabled
        elif nudge == "roles":
            image["roles"] = data.draw(st.lists(st.sampled_from(ROLE_NAMES), max_size=2))
        payload.append(image)
    objects = {
        path: ObjectInfo(
            etag=data.draw(st.sampled_from([img.etag, img.etag, "changed"])),
            size=data.draw(st.sampled_from([img.size, img.size, 0, 999])),
            content_type=data.draw(st.sampled_from([None, img.content_type, "image/png"])),
        )
        for path, img in start.images.items()
    }
    mode = data.draw(st.sampled_from(["UPSERT", "REPLACE"]))
    rules = FoldRules(max_image_bytes=10_000, image_limit=data.draw(st.sampled_from([None, 1, 3])))
    events = [media(5, payload, mode)]
    fast = fold(start, events, objects, rules)
    with patch.object(fold_module, "_unchanged", return_value=False):
        full = fold(start, events, objects, rules)
    assert dict(fast.state.images) == dict(full.state.images)
    assert [r.outcome for r in fast.results] == [r.outcome for r in full.results]
    assert fast.image_counts == full.image_counts
    assert diff(start, fast.state) == diff(start, full.state)


@pytest.mark.parametrize("delete_first", [False, True])
def test_a_duplicate_of_a_no_op_event_after_a_tying_delete_changes_nothing(
    delete_first: bool,
) -> None:
    """Regression (twice over): the fold remembered every event id of its batch, the store only
    those that wrote, so a duplicate of a no-op event after an out-of-order delete resurrected
    the gallery or not depending on whether both copies fell into one batch. Folded again
    in any batch since, it still resurrected it: a re-sent event changing state. Now the
    first of the two to reach version 4 keeps it, and the copy changes nothing, wherever
    batches split."""
    start = state(stored("/a.jpg"), version=1)
    resync = media(4, [{"file_path": "/a.jpg"}])
    delete = product(4, "DELETE")
    events = [delete, resync, delete] if delete_first else [resync, delete, resync]
    whole = fold(start, events, OBJECTS, RULES)
    once = fold(start, events[:2], OBJECTS, RULES)
    assert whole.state == once.state
    for cut in (1, 2):
        first = fold(start, events[:cut], OBJECTS, RULES)
        second = fold(first.state, events[cut:], OBJECTS, RULES)
        assert second.state == whole.state
    assert whole.state.deleted is delete_first
    assert whole.results[1].outcome is EventOutcome.STALE


def test_an_id_reused_by_two_skus_in_one_batch_is_judged_in_consume_order() -> None:
    """Regression: SKUs were folded one by one, each remembering only its own ids, so an id
    written by one SKU and reused by another was dead-lettered when they came in two batches
    but applied twice in one (the outcome row then went to whichever was recorded last)."""
    event_id = str(uuid.uuid4())
    a = media(1, [{"file_path": "/a.jpg"}], event_id=event_id)
    b = lean_of(
        MediaGalleryChanged.model_validate(
            {**_model_fields(a), "sku": "T", "images": [{"file_path": "/b.jpg"}]}
        )
    )
    states = {"S": SkuState("S"), "T": SkuState("T")}
    seen: dict[str, SeenEvent] = {}
    together = fold_batch(states, [a, b], OBJECTS, RULES, seen)
    assert together["S"].results[0].outcome is EventOutcome.WRITTEN
    assert together["T"].results[0].outcome is EventOutcome.DEAD_LETTERED
    assert together["T"].results[0].reason == "duplicate_event_id"
    assert set(seen) == {event_id} and seen[event_id].fingerprint == lean_fingerprint(a)
    apart: dict[str, SeenEvent] = {}
    fold_batch(states, [a], OBJECTS, RULES, apart)
    later = fold_batch(states, [b], OBJECTS, RULES, apart)
    assert later["T"].results[0].reason == "duplicate_event_id"
    assert together["T"].state == later["T"].state == states["T"]


def _model_fields(event: LeanEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "version": event.version,
        "occurred_at": event.occurred_at,
        "source": event.source,
        "mode": "UPSERT",
    }


def test_objects_are_looked_up_for_an_event_after_one_dead_lettered_for_its_id() -> None:
    """Regression (found by the chaos campaign, seed 3): the objects a batch looks up were
    named by replaying versions through the batch, as if every event applied. An event
    dead-lettered for a reused id moved that replay's version past a later, older event,
    whose objects were then not looked up; the fold applied that event and found its
    object "missing": a false object_missing dead letter, the image not stored."""
    event_id = str(uuid.uuid4())
    owner = media(10, [{"file_path": "/a.jpg"}], event_id=event_id)
    reused = media(12, [{"file_path": "/b.jpg"}], "REPLACE", event_id=event_id)
    later = media(11, [{"file_path": "/c.jpg"}], "REPLACE")
    wanted = keys_in_play(SkuState(""), [reused, later])  # as the handler asks, before reading
    assert "/c.jpg" in wanted
    looked_up = {p: o for p, o in OBJECTS.items() if p in wanted}
    start = state(stored("/a.jpg"), version=10, gallery_event_id=event_id)
    seen = {event_id: SeenEvent(lean_fingerprint(owner), "written")}
    result = fold(start, [reused, later], looked_up, RULES, seen)
    assert [r.outcome for r in result.results] == [
        EventOutcome.DEAD_LETTERED,
        EventOutcome.WRITTEN,
    ]
    assert set(result.state.images) == {"/c.jpg"}
