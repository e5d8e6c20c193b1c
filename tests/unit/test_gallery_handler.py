"""A gallery batch decoded while the previous one committed is planned from what that batch
wrote, not from the older reads: the gallery's reads and writes under the runtime's overlay,
without servers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from streamer.contract.codec import Codec
from streamer.contract.events import MediaGalleryChanged
from streamer.contract.lean import lean_of
from streamer.contract.topics import TopicSettings
from streamer.gallery.fold import EventOutcome
from streamer.gallery.handler import GalleryHandler, _Decoded, _Item
from streamer.gallery.metrics import GalleryMetrics
from streamer.gallery.settings import GallerySettings
from streamer.gallery.state import ObjectInfo, SeenEvent, SkuState
from streamer.runtime.errors import DatabaseDataError
from streamer.runtime.handler import HandlerContext, Output
from streamer.runtime.lookahead import Overlay
from streamer.runtime.metrics import new_registry
from streamer.storage.settings import S3Settings
from tests.unit.test_checkpoint import Msg

pytestmark = pytest.mark.unit

OBJECTS: dict[str, ObjectInfo | None] = {"/a.jpg": ObjectInfo("e1", 10, "image/jpeg")}


def handler() -> GalleryHandler:
    h = GalleryHandler(GallerySettings(), TopicSettings(), S3Settings(), codec=Codec())
    h.metrics = GalleryMetrics(new_registry())
    return h


def item(sku: str, version: int, offset: int, event_id: str | None = None) -> _Item:
    event = MediaGalleryChanged.model_validate(
        {
            "event_id": event_id or str(uuid.uuid4()),
            "sku": sku,
            "version": version,
            "occurred_at": datetime(2026, 11, 23, tzinfo=UTC),
            "source": "t",
            "mode": "REPLACE",
            "images": [{"file_path": "/a.jpg", "position": 0, "roles": ["base"]}],
        }
    )
    return _Item(Msg(sku.encode(), offset), lean_of(event))  # type: ignore[arg-type]


def decoded(items: list[_Item], states: dict[str, SkuState]) -> _Decoded:
    by_sku: dict[str, list[_Item]] = {}
    for i in items:
        by_sku.setdefault(i.event.sku, []).append(i)
    seen: dict[str, SeenEvent] = {}
    return _Decoded(len(items), [], items, by_sku, dict(states), seen, dict(OBJECTS))


def outcomes(plan: Any) -> dict[str, list[EventOutcome]]:
    return {sku: [r.outcome for _, r in results] for sku, results in plan.results.items()}


def commit(h: GalleryHandler, overlay: Overlay, plan: Any) -> None:
    """What the runtime does after a commit: the batch's writes kept for the next one."""
    overlay.committed(Output(writes=h.writes(plan)))


async def test_a_batch_read_before_the_previous_commit_is_planned_from_what_it_wrote() -> None:
    h, overlay = handler(), Overlay()
    first = item("A", 5, 0)
    batch_n = h.plan(decoded([first], {"A": SkuState("A")}))
    assert outcomes(batch_n) == {"A": [EventOutcome.WRITTEN]}
    # Batch N+1 was read while N committed: it still sees A as unknown, and not N's event.
    again = item("A", 6, 1)
    redelivered = item("A", 5, 2, event_id=first.event.event_id)
    early = decoded([again, redelivered], {"A": SkuState("A")})
    commit(h, overlay, batch_n)
    overlay.lay_over(early, commits_before=0)
    batch_n1 = h.plan(early)
    # From N's final state, version 6 with the same image changes nothing, and N's own event
    # is a duplicate: nothing is written twice.
    assert outcomes(batch_n1) == {"A": [EventOutcome.NOOP, EventOutcome.DUPLICATE]}
    # Only version 6 is written (the watermark), conditional on the row N created.
    assert list(batch_n1.diffs) == ["A"]
    assert not batch_n1.diffs["A"].images_changed
    assert batch_n1.diffs["A"].read_version == 1


async def test_a_batch_read_after_the_previous_commit_keeps_its_own_reads() -> None:
    h, overlay = handler(), Overlay()
    commit(h, overlay, h.plan(decoded([item("A", 5, 0)], {"A": SkuState("A")})))
    # Read after N committed: what the database said wins (another worker may have written
    # A since, after a rebalance), so N's state is not laid over it.
    newer = SkuState("A", gallery_version=9, exists=True)
    late = decoded([item("A", 7, 1)], {"A": newer})
    overlay.lay_over(late, commits_before=1)
    assert outcomes(h.plan(late)) == {"A": [EventOutcome.STALE]}


async def test_a_batch_decoded_two_commits_back_is_refused() -> None:
    h, overlay = handler(), Overlay()
    for offset in (0, 1):
        commit(h, overlay, h.plan(decoded([item("A", 5 + offset, offset)], {"A": SkuState("A")})))
    with pytest.raises(RuntimeError, match="at most one batch ahead"):
        overlay.lay_over(decoded([item("A", 9, 2)], {"A": SkuState("A")}), commits_before=0)


async def test_a_sku_refused_by_the_database_leaves_a_reused_id_to_its_owner() -> None:
    """Regression: a SKU whose rows the database refused had every event but duplicates
    turned into a ``database_data_error`` dead letter and recorded, an event under a reused
    id too: its row then replaced the owner's, and the owner's own replay was refused."""
    h = handler()
    h.ctx = HandlerContext("gallery", "g", new_registry(), None, None, None)  # type: ignore[arg-type]
    owner = item("A", 5, 0)
    seen = {owner.event.event_id: SeenEvent("fingerprint of the owner's content", "written")}
    reused = item("A", 6, 1, event_id=owner.event.event_id)
    fresh = item("A", 7, 2)
    early = decoded([reused, fresh], {"A": SkuState("A")})
    early.seen.update(seen)
    planned = h.plan(early)
    assert outcomes(planned) == {"A": [EventOutcome.DEAD_LETTERED, EventOutcome.WRITTEN]}
    plan = h._without(planned, {"A": DatabaseDataError("value too long")})
    assert [(r.event_id, r.reason) for r in plan.outcome_rows] == [
        (fresh.event.event_id, "database_data_error")
    ]
    assert sorted(letter.reason for letter in plan.letters) == [
        "database_data_error",
        "duplicate_event_id",
    ]
