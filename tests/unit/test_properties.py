"""The gallery rules under arbitrary delivery, held against the chaos oracle (an independent model).

The consumer sees a SKU's events in partition order, but interleaved with other SKUs', cut
into batches anywhere, with duplicates, and with parts redelivered after a crash or replayed.
``deliver`` does what the handler does to them, batch by batch: the batch folded onto the
stored states with the ids the store remembers (``fold_batch``), the diffs applied to the
store, the outcomes recorded. The final store must be the oracle's, dead letters included;
and whatever the versions (tied, out of order) and ids (reused), a redelivery or duplicate
changes nothing at all.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.contract.codec import Codec
from streamer.contract.errors import ImageInvalid
from streamer.contract.events import normalize_file_path, normalize_roles, parse_event
from streamer.contract.lean import (
    GalleryInput,
    LeanEvent,
    PendingMedia,
    lean_event,
    lean_fingerprint,
    lean_of,
)
from streamer.gallery.diff import SkuDiff, diff
from streamer.gallery.fold import EventOutcome, FoldRules, fold, fold_batch, keys_in_play
from streamer.gallery.resync import digest_key, pending_media, settle
from streamer.gallery.state import ObjectInfo, SeenEvent, SkuState, StoredImage, display_order
from tests.chaos.oracle import Obj, Oracle

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, tzinfo=UTC)
MAX_BYTES = 1000
OBJECTS = {
    "/a.jpg": ObjectInfo("etag-a", 10, "image/jpeg"),
    "/b.jpg": ObjectInfo("etag-b", 20, "image/jpeg"),
    "/c/d.jpg": ObjectInfo("etag-d", 30, "image/png"),
    "/big.jpg": ObjectInfo("etag-big", 5000, "image/jpeg"),
}
ORACLE_OBJECTS = {p: Obj(o.etag, o.size) for p, o in OBJECTS.items()}
RECORDED = {EventOutcome.WRITTEN, EventOutcome.PARTIAL}

# -- generated histories, as dictionaries the oracle reads ----------------------------------

image_dicts = st.fixed_dictionaries(
    {
        "file_path": st.sampled_from(
            ["/a.jpg", "a.jpg", "/b.jpg", "//b.jpg", "/c/d.jpg", "/big.jpg", "/none.jpg", "/x/../a"]
        ),
        "label": st.sampled_from([None, "front", "back"]),
        "position": st.sampled_from([None, 0, 1, 2]),
        "disabled": st.booleans(),
        "roles": st.lists(
            st.sampled_from(["base", "image", "thumbnail", "small_image", "Swatch_Image", "hero"]),
            max_size=3,
        ),
    }
)
bodies = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.just("MediaGalleryChanged"),
            "mode": st.sampled_from(["UPSERT", "REPLACE"]),
            "images": st.lists(image_dicts, max_size=4),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("ProductChanged"),
            "op": st.sampled_from(["UPSERT", "UPSERT", "DELETE"]),
            "name": st.sampled_from([None, "shirt", "shoe"]),
            "enabled": st.booleans(),
        }
    ),
)


@st.composite
def sku_history(draw: st.DrawFn, sku: str) -> list[dict[str, Any]]:
    """One SKU's events in partition order: versions in any order and often tied (stale
    ones, ties ordered by event_id), some re-sent as they were, some ids reused for other
    content."""
    events: list[dict[str, Any]] = []
    for version in draw(st.lists(st.integers(1, 12), min_size=1, max_size=6)):
        body = draw(bodies)
        event_id = str(draw(st.uuids(version=4)))
        if events and draw(st.integers(0, 5)) == 0:
            event_id = draw(st.sampled_from(events))["event_id"]  # reused for other content
        events.append({"event_id": event_id, "sku": sku, "version": version, **body})
        if draw(st.integers(0, 4)) == 0:
            events.append(draw(st.sampled_from(events)))  # a duplicate, re-sent later
        media = [e for e in events if e["type"] == "MediaGalleryChanged"]
        if media and draw(st.integers(0, 2)) == 0:  # a re-sync: a payload again, new id
            again = draw(st.sampled_from(media))
            events.append(
                {
                    **again,
                    "event_id": str(draw(st.uuids(version=4))),
                    "version": draw(st.integers(1, 12)),
                }
            )
    return events


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """The SKUs' histories interleaved in any way that keeps each SKU's order; now and then
    an id of one SKU's event reused by another SKU's."""
    per_sku = [draw(sku_history(sku)) for sku in ("S1", "S2", "S3")]
    if draw(st.integers(0, 3)) == 0:
        at = draw(st.integers(0, len(per_sku[1]) - 1))
        taken = draw(st.sampled_from(per_sku[0]))["event_id"]
        per_sku[1][at] = {**per_sku[1][at], "event_id": taken}
    picks = draw(
        st.permutations([i for i, events in enumerate(per_sku) for _ in events]),
    )
    cursors = [0, 0, 0]
    merged = []
    for i in picks:
        merged.append(per_sku[i][cursors[i]])
        cursors[i] += 1
    return merged


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[Any], list[Any], list[int]]:
    """(published, delivered, batch sizes): delivered is published with up to two stretches
    consumed again (a crash before the commit, a replay of the topic)."""
    published = draw(histories())
    delivered = list(published)
    for _ in range(draw(st.integers(0, 2))):
        end = draw(st.integers(0, len(delivered)))
        start = draw(st.integers(0, end))
        delivered = delivered[:end] + delivered[start:]
    sizes = draw(st.lists(st.integers(1, 8), min_size=1, max_size=len(delivered) + 1))
    return published, delivered, sizes


# -- the handler's rules, batch by batch, over an in-memory store ----------------------------


def lean(event: dict[str, Any]) -> LeanEvent:
    record = {k: v for k, v in event.items() if k != "type"}
    record.update(occurred_at=NOW, source="props")
    return lean_event(event["type"], record)


def apply_diff(stored: SkuState, d: SkuDiff) -> SkuState:
    """What the repository leaves stored after writing ``d``: only the rows the diff names."""
    images = {p: i for p, i in stored.images.items() if p not in d.removes}
    for image in (*d.inserts, *d.content_changes, *d.metadata_changes):
        images[image.file_path] = image
    base = d.product if d.product is not None else stored
    return replace(base, images=images, row_version=stored.row_version + (d.product is not None))


@dataclass
class Store:
    states: dict[str, SkuState]
    seen: dict[str, SeenEvent]
    letters: Counter[tuple[str, str]]
    outcomes: list[tuple[str, str]] = field(default_factory=list)
    judged_pending: int = 0  # re-syncs the fold judged without decoding their images


CODEC = Codec()


def wire(event: dict[str, Any], digest: bytes | None) -> GalleryInput:
    """The event as the handler gets it from its Avro bytes: a media event decoded up to
    its images where ``pending_media`` takes it, else decoded in full."""
    if event["type"] == "MediaGalleryChanged" and digest is not None:
        record = {k: v for k, v in event.items() if k != "type"}
        record.update(occurred_at=NOW, source="props")
        value = CODEC.encode(parse_event(event["type"], record), topic="props")
        pending = pending_media(CODEC, value, event["sku"].encode(), digest)
        assert pending is not None
        return pending
    return lean(event)


def deliver(
    delivered: Sequence[dict[str, Any]], sizes: Sequence[int], *, resync: bool = False
) -> Store:
    """``resync``: media events come as the handler reads them from Avro bytes, decoded up to
    their images and settled against the stored state (``gallery.resync``)."""
    store = Store({}, {}, Counter())
    rules = FoldRules(max_image_bytes=MAX_BYTES)
    key = digest_key(rules) if resync else None
    events = [wire(e, key) for e in delivered]
    at = 0
    for size in [*sizes, len(events)]:
        batch, at = events[at : at + size], at + size
        states = {e.sku: store.states.get(e.sku, SkuState(e.sku)) for e in batch}
        seen = {e.event_id: store.seen[e.event_id] for e in batch if e.event_id in store.seen}
        # Only the objects the handler looks up, as it does: those of fully decoded events
        # before the state is read, then those of the pending events as they settle.
        wanted = keys_in_play(
            SkuState(""), [e for e in batch if not isinstance(e, PendingMedia)], rules
        )
        settled: list[GalleryInput] = []
        for e in batch:
            if isinstance(e, PendingMedia):
                e, needed = settle(e, states[e.sku], rules)
                wanted |= needed
            settled.append(e)
        objects = {p: o for p, o in OBJECTS.items() if p in wanted}
        for sku, folded in fold_batch(states, settled, objects, rules, seen).items():
            store.states[sku] = apply_diff(states[sku], diff(states[sku], folded.state))
            for r in folded.results:
                store.outcomes.append((r.event.event_id, r.outcome.value))
                store.judged_pending += isinstance(r.event, PendingMedia)
                if r.outcome in RECORDED:
                    store.seen[r.event.event_id] = SeenEvent(
                        lean_fingerprint(r.event), r.outcome.value
                    )
                if r.outcome in (EventOutcome.PARTIAL, EventOutcome.DEAD_LETTERED):
                    store.letters[(r.event.event_id, r.reason or "")] += 1
        if at >= len(events):
            break
    return store


def export(states: dict[str, SkuState]) -> list[dict[str, Any]]:
    """``streamer gallery export``'s shape, as ``Oracle.export`` gives it."""
    return [
        {
            "sku": name,
            "version": max(state.product_version, state.gallery_version),
            "deleted": state.deleted,
            "name": state.name,
            "enabled": state.enabled,
            "images": [
                {
                    "file_path": img.file_path,
                    "etag": img.etag,
                    "label": img.label,
                    "position": img.position,
                    "disabled": img.disabled,
                    "roles": sorted(img.roles),
                }
                for img in sorted(state.images.values(), key=display_order)
            ],
        }
        for name, state in sorted(states.items())
        if state.exists
    ]


def content_versions(states: dict[str, SkuState]) -> dict[tuple[str, str], int]:
    return {(n, p): i.content_version for n, s in states.items() for p, i in s.images.items()}


def oracle_of(events: Sequence[dict[str, Any]]) -> Oracle:
    oracle = Oracle(max_image_bytes=MAX_BYTES)
    for event in events:
        oracle.apply(event, ORACLE_OBJECTS)
    return oracle


@settings(max_examples=300, deadline=None)
@given(deliveries())
def test_any_delivery_in_any_batches_ends_as_the_oracle_says(
    case: tuple[list[Any], list[Any], list[int]],
) -> None:
    _, delivered, sizes = case
    store = deliver(delivered, sizes)
    oracle = oracle_of(delivered)
    assert export(store.states) == oracle.export()
    assert content_versions(store.states) == oracle.content_versions()
    # The same dead letters (a partial event duplicated inside one batch is sent once, one
    # redelivered in a later batch again: at least once either way).
    assert set(store.letters) == {(ltr.event_id, ltr.reason) for ltr in oracle.letters}


@settings(max_examples=300, deadline=None)
@given(deliveries())
def test_redeliveries_and_duplicates_change_nothing_whatever_the_versions(
    case: tuple[list[Any], list[Any], list[int]],
) -> None:
    """Versions in any order, tied or not, deletes, ids reused for other content: the
    gallery, and every content version, ends as if the history had been consumed once, in
    one batch. A redelivered event is stale, or the event that set its SKU's position (so
    applying it again changes nothing), or under an id another content owns."""
    published, delivered, sizes = case
    once = deliver(published, [len(published)])
    again = deliver(delivered, sizes)
    assert export(again.states) == export(once.states) == oracle_of(published).export()
    assert content_versions(again.states) == content_versions(once.states)


@settings(max_examples=300, deadline=None)
@given(deliveries())
def test_resyncs_judged_before_their_images_are_decoded_end_as_decoded_ones(
    case: tuple[list[Any], list[Any], list[int]],
) -> None:
    """A media event recognised as the payload that made the stored images is judged without
    them: every outcome, the stored galleries, content versions and dead letters are those
    of the same delivery decoded in full."""
    _, delivered, sizes = case
    decoded = deliver(delivered, sizes)
    recognised = deliver(delivered, sizes, resync=True)
    assert recognised.outcomes == decoded.outcomes
    assert export(recognised.states) == export(decoded.states)
    assert content_versions(recognised.states) == content_versions(decoded.states)
    assert recognised.letters == decoded.letters
    assert {s: replace(st, gallery_digest=None) for s, st in recognised.states.items()} == {
        s: replace(st, gallery_digest=None) for s, st in decoded.states.items()
    }


def test_a_resync_of_the_stored_payload_is_judged_without_its_images() -> None:
    """The fast path is taken (not only agreed with): the second event is never decoded."""
    images = [{"file_path": "/a.jpg", "roles": ["base"]}, {"file_path": "/b.jpg"}]
    first = {
        "type": "MediaGalleryChanged",
        "event_id": str(uuid.uuid4()),
        "sku": "S1",
        "version": 1,
        "mode": "REPLACE",
        "images": images,
    }
    again = {**first, "event_id": str(uuid.uuid4()), "version": 2}
    store = deliver([first, again], [1, 1], resync=True)
    assert store.outcomes == [(first["event_id"], "written"), (again["event_id"], "noop")]
    assert store.judged_pending == 1
    assert store.states["S1"].gallery_version == 2
    assert store.states["S1"].gallery_digest is not None


def test_a_replayed_no_op_delete_does_not_remove_a_newer_gallery() -> None:
    """A DELETE removes the gallery too, so it is stale against the gallery's version as
    well as the product's: replayed after a newer media event it changes nothing."""

    def event(version: int, **body: Any) -> dict[str, Any]:
        return {"event_id": str(uuid.uuid4()), "sku": "S1", "version": version, **body}

    media = {"type": "MediaGalleryChanged", "mode": "UPSERT"}
    delete = {"type": "ProductChanged", "op": "DELETE", "name": None, "enabled": True}
    published = [
        event(1, **media, images=[{"file_path": "/a.jpg"}]),
        event(2, **delete),
        event(3, **delete),  # a no-op: already deleted
        event(6, **media, images=[{"file_path": "/a.jpg"}]),  # resurrects
    ]
    once = deliver(published, [len(published)])
    replayed = deliver([*published, *published[2:]], [len(published)])
    assert export(replayed.states) == export(once.states)


# -- normalisation is idempotent; fold and diff take any valid model --------------------------


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40))
def test_path_normalisation_is_idempotent(raw: str) -> None:
    try:
        once = normalize_file_path(raw)
    except ImageInvalid as exc:
        reason = exc.reason
    else:
        assert normalize_file_path(once) == once
        assert once.startswith("/") and not once.startswith("//")
        return
    assert reason == "invalid_file_path"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=12), st.sampled_from([" Base ", "THUMBNAIL"]))))
def test_role_normalisation_is_idempotent(roles: list[str]) -> None:
    managed, unknown = normalize_roles(roles)
    assert normalize_roles(list(managed)) == (managed, ())
    assert normalize_roles([*managed, *unknown]) == (managed, unknown)


@settings(max_examples=200, deadline=None)
@given(histories())
def test_an_event_normalised_again_is_the_same_event(events: list[dict[str, Any]]) -> None:
    """A model's own output read back as input (what a re-publish or replay does) is a fixpoint."""
    for event in events:
        record = {k: v for k, v in event.items() if k != "type"}
        record.update(occurred_at=NOW, source="props")
        model = parse_event(event["type"], record)
        again = parse_event(event["type"], model.model_dump(exclude={"type"}))
        assert again == model
        assert lean_of(again) == lean(event)


stored_images = st.builds(
    StoredImage,
    file_path=st.sampled_from(["/a.jpg", "/b.jpg", "/gone.jpg"]),
    etag=st.sampled_from(["etag-a", "old"]),
    size=st.integers(0, 2000),
    content_type=st.sampled_from([None, "image/jpeg"]),
    label=st.sampled_from([None, "x"]),
    position=st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)),
    disabled=st.booleans(),
    roles=st.lists(st.sampled_from(["image", "thumbnail"]), unique=True).map(tuple),
    content_version=st.integers(1, 2**31),
)
stored_states = st.builds(
    lambda imgs, pv, gv, deleted, exists: SkuState(
        "S1",
        product_version=pv,
        gallery_version=gv,
        deleted=deleted,
        images={i.file_path: i for i in imgs},
        exists=exists,
    ),
    st.lists(stored_images, max_size=3),
    st.integers(-1, 2**63 - 1),
    st.integers(-1, 2**63 - 1),
    st.booleans(),
    st.booleans(),
)
any_objects = st.dictionaries(
    st.sampled_from(["/a.jpg", "/b.jpg", "/c/d.jpg", "/none.jpg"]),
    st.one_of(
        st.none(),
        st.builds(
            ObjectInfo,
            etag=st.text(max_size=4),
            size=st.integers(0, 2**40),
            content_type=st.one_of(st.none(), st.text(max_size=5)),
        ),
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    stored_states,
    st.lists(bodies.map(lambda b: {**b, "event_id": str(uuid.uuid4()), "sku": "S1"}), max_size=5),
    st.lists(st.integers(0, 2**63 - 1), min_size=5, max_size=5),
    any_objects,
    st.one_of(st.none(), st.integers(0, 3)),
    st.booleans(),
)
def test_fold_and_diff_never_raise_on_valid_models(
    start: SkuState,
    raw: list[dict[str, Any]],
    versions: list[int],
    objects: dict[str, ObjectInfo | None],
    limit: int | None,
    verify: bool,
) -> None:
    events = [lean({**e, "version": v}) for e, v in zip(raw, versions, strict=False)]
    rules = FoldRules(max_image_bytes=MAX_BYTES, image_limit=limit, verify_producer_etag=verify)
    result = fold(start, events, objects, rules)
    assert len(result.results) == len(events)
    d = diff(start, result.state)
    assert apply_diff(start, d).images == result.state.images
    if limit is not None:
        assert len(result.state.images) <= max(limit, len(start.images))
