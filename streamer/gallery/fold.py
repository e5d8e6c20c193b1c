"""Folding a SKU's events, in consume order, onto its stored state. Pure: no I/O.

The fold is a left fold: folding a list in two halves, persisting the state
between, gives the same final state as folding it whole. That is what makes
batch boundaries (and so crashes and rebalances) invisible in the result.

Two rules make the result independent of batches, redeliveries and the retention of
outcomes (README, "Event contract"):

- The first event to reach a version keeps it: the SKU's state remembers which event set
  each of its versions, and an event with an older version, or with the same version and
  another id, is stale. The same event again (a redelivery, a replay of its dead letter) is
  applied again, which changes nothing unless objects changed. So a redelivered event is
  either stale or the one that set the version, and a tie is never decided by which copy
  of an event arrived last, nor by the retention of outcomes.
- An event id is owned by the first event under it that was written, partial or
  dead-lettered (``seen``, shared by every SKU of a batch and read from the store): the
  same content again is a duplicate (applied again only after partial or dead-lettered,
  which is how a replay completes it), other content is dead-lettered
  (``duplicate_event_id``). An event that changed nothing owns no id: no-ops cost no write.

Most events of a re-sync change nothing. Such an event costs a comparison: when
every image it lists resolves to the stored image as it is (same ETag, metadata
and roles) and nothing stored would be removed or lose a role, the stored images
are kept as they are (the same mapping) and nothing is rebuilt or sorted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from streamer.contract.events import GalleryMode, ProductOp
from streamer.contract.lean import (
    GalleryInput,
    LeanImage,
    LeanMedia,
    LeanProduct,
    LeanRecheck,
    PendingMedia,
    lean_fingerprint,
)
from streamer.gallery.state import ObjectInfo, SeenEvent, SkuState, StoredImage, display_order

__all__ = [
    "REPLAYABLE",
    "EventOutcome",
    "EventResult",
    "FoldResult",
    "FoldRules",
    "fold",
    "fold_batch",
    "keys_in_play",
]

Event = GalleryInput


class EventOutcome(StrEnum):
    WRITTEN = "written"
    NOOP = "noop"
    STALE = "stale"
    DUPLICATE = "duplicate"
    PARTIAL = "partial"
    DEAD_LETTERED = "dead_lettered"


# Outcomes after which the same event may come back (a dead-letter replay) and be applied.
REPLAYABLE = frozenset({EventOutcome.PARTIAL.value, EventOutcome.DEAD_LETTERED.value})


@dataclass(frozen=True)
class EventResult:
    event: Event
    outcome: EventOutcome
    invalid_images: tuple[LeanImage, ...] = ()
    reason: str | None = None
    message: str | None = None
    fingerprint: str | None = None  # set when the event now owns its id (written, partial)


@dataclass(frozen=True)
class FoldResult:
    state: SkuState
    results: list[EventResult]
    image_counts: Counter[str] = field(default_factory=Counter)
    unknown_roles: int = 0


@dataclass(frozen=True)
class FoldRules:
    max_image_bytes: int = 10 * 1024 * 1024
    image_limit: int | None = None  # None: no limit; 0: gallery sync off; N: keep the first N
    verify_producer_etag: bool = True


def _trusted(image: LeanImage, rules: FoldRules) -> bool:
    return not rules.verify_producer_etag and image.etag is not None


def keys_in_play(
    state: SkuState, events: Sequence[Event], rules: FoldRules | None = None
) -> set[str]:
    """Paths whose objects the fold may look up: the valid images of every media event that
    is not stale against ``state`` (versions only grow, so such an event is stale whatever
    comes before it), and the paths of re-checks.

    An event earlier in the batch is not assumed to apply: it may be dead-lettered (its id
    reused) or stale, and then leaves the version where it was, so a later event it would
    have made stale is applied after all and needs its objects.
    """
    rules = rules or FoldRules()
    if rules.image_limit == 0:
        return set()
    gallery = state.gallery_key
    paths: set[str] = set()
    for event in events:
        if isinstance(event, PendingMedia):
            event = event.full()
        if isinstance(event, LeanRecheck):
            paths.update(event.file_paths)
        elif isinstance(event, LeanMedia) and not _is_older(event, gallery):
            paths.update(i.file_path for i in event.images if i.valid and not _trusted(i, rules))
    return paths


def _resolve(
    image: LeanImage,
    objects: Mapping[str, ObjectInfo | None],
    rules: FoldRules,
    counts: Counter[str],
) -> ObjectInfo | LeanImage:
    """The object behind an image, or the image marked invalid with the reason."""
    if _trusted(image, rules) and image.file_path not in objects:
        return ObjectInfo(etag=image.etag or "", size=0)
    info = objects.get(image.file_path)
    if info is None:
        return image._replace(
            invalid_reason="object_missing",
            invalid_message=f"{image.file_path}: no object in S3 (yet)",
        )
    if info.size > rules.max_image_bytes:
        return image._replace(
            invalid_reason="object_too_large",
            invalid_message=f"{image.file_path}: {info.size} bytes, over the "
            f"{rules.max_image_bytes}-byte limit",
        )
    if image.etag is not None and image.etag != info.etag:
        counts["etag_mismatch"] += 1
    return info


def _owned(owner: Mapping[str, str], path: str) -> tuple[str, ...]:
    """The roles whose last claim is ``path``'s: a path listed twice keeps what either claimed
    last (and its other fields from its last listing)."""
    return tuple(sorted(role for role, claimant in owner.items() if claimant == path))


def _unchanged(
    state: SkuState,
    event: LeanMedia,
    resolved: list[tuple[LeanImage, ObjectInfo]],
    rules: FoldRules,
) -> bool:
    """Whether applying a fully valid media event keeps every stored image as it is."""
    stored = state.images
    if rules.image_limit is not None and len(stored) > rules.image_limit:
        return False
    owner: dict[str, str] = {}
    for image, _ in resolved:
        for role in image.roles:
            owner[role] = image.file_path
    listed = {image.file_path for image, _ in resolved}
    for path, kept in stored.items():
        if path not in listed and (event.mode is GalleryMode.REPLACE or kept.roles):
            return False  # removed, or loses its roles to the payload
    for image, info in resolved:
        old = stored.get(image.file_path)
        if (
            old is None
            or old.etag != info.etag
            or (info.size and info.size != old.size)
            or (info.content_type and info.content_type != old.content_type)
            or old.label != image.label
            or old.position != image.position
            or old.disabled != image.disabled
            or old.roles != _owned(owner, image.file_path)
        ):
            return False
    return True


def _apply_media(
    state: SkuState,
    event: LeanMedia,
    objects: Mapping[str, ObjectInfo | None],
    rules: FoldRules,
    counts: Counter[str],
) -> tuple[SkuState, list[LeanImage]]:
    invalid: list[LeanImage] = []
    resolved: list[tuple[LeanImage, ObjectInfo]] = []
    mismatches = counts["etag_mismatch"]
    for image in event.images:
        if not image.valid:
            invalid.append(image)
            continue
        found = _resolve(image, objects, rules, counts)
        if isinstance(found, LeanImage):
            invalid.append(found)
        else:
            resolved.append((image, found))
    for image in invalid:
        counts[image.invalid_reason or "invalid"] += 1
    # Whether the payload alone says what the images become (see SkuState.gallery_digest).
    repeatable = (
        event.digest is not None
        and not invalid
        and counts["etag_mismatch"] == mismatches
        and not any(image.unknown_roles for image in event.images)
    )
    if not invalid and _unchanged(state, event, resolved, rules):
        if resolved:
            counts["unchanged"] += len({image.file_path for image, _ in resolved})
        # Built directly: dataclasses.replace costs twice as much, on every no-op event.
        new = _gallery_at(state, event, _digest(event, state.images, repeatable))
        return new, invalid

    images = dict(state.images)
    if event.mode is GalleryMode.REPLACE:
        listed = {image.file_path for image in event.images}
        images = {p: i for p, i in images.items() if p in listed}
    owns_roles = not invalid
    owner: dict[str, str] = {}
    if owns_roles:
        for image, _ in resolved:
            for role in image.roles:
                owner[role] = image.file_path  # last claim wins
        # The payload owns the roles: stored images it does not list lose theirs.
        listed_now = {image.file_path for image, _ in resolved}
        for p, i in images.items():
            if i.roles and p not in listed_now:
                images[p] = i._replace(roles=())
    for image, info in resolved:
        path = image.file_path
        old = state.images.get(path)
        same_bytes = old is not None and old.etag == info.etag
        kept_roles = old.roles if old is not None else ()
        roles = _owned(owner, path) if owns_roles else kept_roles
        images[path] = StoredImage(
            file_path=path,
            etag=info.etag,
            # A LIST look-up has no content type and a trusted producer ETag no size:
            # keep what a HEAD recorded for the same bytes rather than flapping.
            size=info.size or (old.size if same_bytes and old else 0),
            content_type=info.content_type or (old.content_type if same_bytes and old else None),
            label=image.label,
            position=image.position,
            disabled=image.disabled,
            roles=roles,
            content_version=1 if old is None else old.content_version + (0 if same_bytes else 1),
        )
    if rules.image_limit is not None and len(images) > rules.image_limit:
        ordered = sorted(images.values(), key=display_order)
        counts["dropped_limit"] += len(ordered) - rules.image_limit
        images = {i.file_path: i for i in ordered[: rules.image_limit]}
    for path in dict.fromkeys(image.file_path for image, _ in resolved):
        before, after = state.images.get(path), images.get(path)
        if after is None:
            continue  # dropped by the image limit, counted above
        if before is None:
            counts["added"] += 1
        elif before.etag != after.etag:
            counts["content_changed"] += 1
        elif before == after:
            counts["unchanged"] += 1
        else:
            counts["metadata_changed"] += 1
    removed = sum(1 for p in state.images if p not in images)
    if removed:
        counts["removed"] += removed
    new = replace(
        state,
        gallery_version=event.version,
        gallery_event_id=event.event_id,
        images=images,
        deleted=False,
        exists=True,
        gallery_digest=_digest(event, images, repeatable),
    )
    return new, invalid


def _digest(event: LeanMedia, images: Mapping[str, StoredImage], repeatable: bool) -> bytes | None:
    """The event's digest for the state it leaves, when the payload alone made those images:
    it listed each of them (valid), and no other."""
    if not repeatable or images.keys() != {i.file_path for i in event.images}:
        return None
    return event.digest


def _repeated(
    state: SkuState,
    event: PendingMedia,
    objects: Mapping[str, ObjectInfo | None],
    rules: FoldRules,
    owned: Mapping[str, SeenEvent],
) -> SkuState | None:
    """The state after a re-sync of the payload that made the stored images, judged without
    decoding them; None when the event needs its images (``PendingMedia.full``).

    The stored images are what that payload gives, so applying it again changes them only if
    an object behind them changed: each must resolve (looked up by the decode, as the stored
    images' paths) to the stored ETag, size and content type, within the size limit.
    """
    if (
        rules.image_limit == 0
        or not state.exists
        or state.deleted
        or state.gallery_digest != event.digest
        or event.event_id in owned
        or _is_older(event, state.gallery_key)
    ):
        return None
    for path, image in state.images.items():
        info = objects.get(path)
        if (
            info is None
            or info.size > rules.max_image_bytes
            or info.etag != image.etag
            or (info.size and info.size != image.size)
            or (info.content_type and info.content_type != image.content_type)
        ):
            return None
    return _gallery_at(state, event, state.gallery_digest)


def _apply_recheck(
    state: SkuState,
    event: LeanRecheck,
    objects: Mapping[str, ObjectInfo | None],
    rules: FoldRules,
    counts: Counter[str],
) -> tuple[SkuState, list[LeanImage]]:
    """The stored images of the re-checked paths, with what the objects say now. Paths the
    gallery no longer holds are ignored; versions, metadata and roles stay as they are."""
    images: dict[str, StoredImage] | None = None
    invalid: list[LeanImage] = []
    for path in event.file_paths:
        old = state.images.get(path)
        if old is None:
            continue
        info = objects.get(path)
        if info is None:
            invalid.append(
                LeanImage(
                    path,
                    invalid_reason="object_missing",
                    invalid_message=f"{path}: no object in S3 (deleted since it was stored)",
                )
            )
            continue
        if info.size > rules.max_image_bytes:
            invalid.append(
                LeanImage(
                    path,
                    invalid_reason="object_too_large",
                    invalid_message=f"{path}: {info.size} bytes, over the "
                    f"{rules.max_image_bytes}-byte limit",
                )
            )
            continue
        same_bytes = info.etag == old.etag
        now = old._replace(
            etag=info.etag,
            size=info.size or (old.size if same_bytes else 0),
            content_type=info.content_type or (old.content_type if same_bytes else None),
            content_version=old.content_version + (0 if same_bytes else 1),
        )
        if now == old:
            counts["unchanged"] += 1
            continue
        counts["metadata_changed" if same_bytes else "content_changed"] += 1
        if images is None:
            images = dict(state.images)
        images[path] = now
    for image in invalid:
        counts[image.invalid_reason or "invalid"] += 1
    return (state if images is None else replace(state, images=images)), invalid


def _is_older(event: LeanProduct | LeanMedia | PendingMedia, claimed: tuple[int, str]) -> bool:
    """Whether the event is stale against a stored (version, event_id that set it): an older
    version, or the same version set by another event ("": by an event not known, which
    the event then takes over)."""
    return event.version < claimed[0] or (
        event.version == claimed[0] and claimed[1] != "" and event.event_id != claimed[1]
    )


def fold(
    state: SkuState,
    events: Sequence[Event],
    objects: Mapping[str, ObjectInfo | None],
    rules: FoldRules,
    seen: MutableMapping[str, SeenEvent] | None = None,
) -> FoldResult:
    """Apply events in order; each gets an outcome, and the final state is returned.

    ``seen``: the event ids already owned (from the store, and by the batch's events folded
    before these); the ids these events come to own are added to it.
    """
    results: list[EventResult] = []
    counts: Counter[str] = Counter()
    unknown_roles = 0
    owned: MutableMapping[str, SeenEvent] = {} if seen is None else seen
    current = state
    for pending in events:
        if isinstance(pending, PendingMedia):
            repeated = _repeated(current, pending, objects, rules, owned)
            if repeated is not None:
                if current.images:
                    counts["unchanged"] += len(current.images)
                results.append(EventResult(pending, EventOutcome.NOOP))
                current = repeated
                continue
            event: LeanProduct | LeanMedia | LeanRecheck = pending.full()
        else:
            event = pending
        prior = owned.get(event.event_id)
        if prior is not None:
            if prior.fingerprint != lean_fingerprint(event):
                results.append(
                    EventResult(
                        event,
                        EventOutcome.DEAD_LETTERED,
                        reason="duplicate_event_id",
                        message=f"event_id {event.event_id} was seen before "
                        "with a different payload",
                    )
                )
                continue
            if prior.outcome not in REPLAYABLE:
                results.append(EventResult(event, EventOutcome.DUPLICATE))
                continue

        if isinstance(event, LeanProduct):
            # A DELETE removes the gallery too, so it must be as new as the gallery.
            if _is_older(event, current.product_key) or (
                event.op is ProductOp.DELETE and _is_older(event, current.gallery_key)
            ):
                results.append(EventResult(event, EventOutcome.STALE))
                continue
            if event.op is ProductOp.DELETE:
                if current.images:
                    counts["removed"] += len(current.images)
                # Not older than the gallery: it now holds the gallery's version too.
                new = replace(
                    current,
                    product_version=event.version,
                    product_event_id=event.event_id,
                    gallery_version=event.version,
                    gallery_event_id=event.event_id,
                    deleted=True,
                    images={},
                    exists=True,
                    gallery_digest=None,
                )
            else:
                new = replace(
                    current,
                    product_version=event.version,
                    product_event_id=event.event_id,
                    name=event.name,
                    enabled=event.enabled,
                    deleted=False,
                    exists=True,
                )
            invalid: list[LeanImage] = []
        elif isinstance(event, LeanRecheck):
            if rules.image_limit == 0:
                results.append(EventResult(event, EventOutcome.NOOP))
                continue
            new, invalid = _apply_recheck(current, event, objects, rules, counts)
        else:
            unknown_roles += sum(len(i.unknown_roles) for i in event.images)
            if _is_older(event, current.gallery_key):
                results.append(EventResult(event, EventOutcome.STALE))
                continue
            if rules.image_limit == 0:
                counts["dropped_limit"] += len(event.images)
                results.append(EventResult(event, EventOutcome.NOOP))
                continue
            new, invalid = _apply_media(current, event, objects, rules, counts)

        if invalid:
            fingerprint = lean_fingerprint(event)
            owned[event.event_id] = SeenEvent(fingerprint, EventOutcome.PARTIAL.value)
            results.append(
                EventResult(
                    event,
                    EventOutcome.PARTIAL,
                    invalid_images=tuple(invalid),
                    reason=invalid[0].invalid_reason,
                    message="; ".join(f"{i.invalid_message or i.invalid_reason}" for i in invalid),
                    fingerprint=fingerprint,
                )
            )
        elif not new.same_content(current):
            fingerprint = lean_fingerprint(event)
            owned[event.event_id] = SeenEvent(fingerprint, EventOutcome.WRITTEN.value)
            results.append(EventResult(event, EventOutcome.WRITTEN, fingerprint=fingerprint))
        else:
            results.append(EventResult(event, EventOutcome.NOOP))
        current = new
    return FoldResult(current, results, counts, unknown_roles)


def fold_batch(
    states: Mapping[str, SkuState],
    events: Sequence[Event],
    objects: Mapping[str, ObjectInfo | None],
    rules: FoldRules,
    seen: MutableMapping[str, SeenEvent],
) -> dict[str, FoldResult]:
    """A batch's events (in consume order) folded onto their SKUs' states, ids judged in
    consume order across SKUs, as if every event were a batch of its own.

    Event ids belong to one SKU in every batch but a source's mistake: then each SKU folds
    in one go. An id under two SKUs makes its owner depend on which came first, so such a
    batch folds event by event, in consume order.
    """
    by_sku: dict[str, list[Event]] = {}
    sku_of: dict[str, str] = {}
    shared = False
    for event in events:
        by_sku.setdefault(event.sku, []).append(event)
        shared = shared or sku_of.setdefault(event.event_id, event.sku) != event.sku
    if not shared:
        return {sku: fold(states[sku], its, objects, rules, seen) for sku, its in by_sku.items()}
    current = {sku: states[sku] for sku in by_sku}
    results: dict[str, list[EventResult]] = {sku: [] for sku in by_sku}
    counts: dict[str, Counter[str]] = {sku: Counter() for sku in by_sku}
    unknown: Counter[str] = Counter()
    for event in events:
        one = fold(current[event.sku], [event], objects, rules, seen)
        current[event.sku] = one.state
        results[event.sku].extend(one.results)
        counts[event.sku].update(one.image_counts)
        unknown[event.sku] += one.unknown_roles
    return {
        sku: FoldResult(current[sku], results[sku], counts[sku], unknown[sku]) for sku in by_sku
    }


def _gallery_at(state: SkuState, event: LeanMedia | PendingMedia, digest: bytes | None) -> SkuState:
    """The stored gallery, unchanged, at the event's version and id. Built directly:
    ``dataclasses.replace`` costs twice as much, on every no-op event."""
    return SkuState(
        state.sku,
        state.product_version,
        event.version,
        False,
        state.name,
        state.enabled,
        state.images,
        True,
        state.row_version,
        state.product_event_id,
        event.event_id,
        digest,
    )
