"""What tracking knows, with no I/O: how a tracked message names its item, and the
``ImportCompleted`` record of a complete bulk."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "BULK_ITEM_HEADER",
    "OUTCOMES",
    "TrackedItem",
    "TrackedOutcome",
    "completion_event_id",
    "completion_record",
    "item_header",
    "tracked_item",
]

# A message published by the intake carries its item as "<bulk_uuid>/<item_id>". It survives
# dead-lettering and replay (dead letters keep the original headers), so a replayed item
# still lands on its bulk.
BULK_ITEM_HEADER = "streamer.bulk.item"
OUTCOMES = ("written", "noop", "partial", "dead_lettered", "stale", "duplicate")


@dataclass(frozen=True, slots=True)
class TrackedItem:
    bulk_uuid: str
    item_id: int


@dataclass(frozen=True, slots=True)
class TrackedOutcome:
    bulk_uuid: str
    item_id: int
    outcome: str
    reason: str | None = None


def item_header(bulk_uuid: str, item_id: int) -> tuple[str, bytes]:
    return BULK_ITEM_HEADER, f"{bulk_uuid}/{item_id}".encode()


def tracked_item(headers: Iterable[tuple[str, bytes | None]] | None) -> TrackedItem | None:
    """The item a message belongs to, or None (untracked, or a header that is not ours)."""
    for name, value in headers or ():
        if name != BULK_ITEM_HEADER or value is None:
            continue
        bulk, _, item = value.decode("ascii", "replace").partition("/")
        try:
            return TrackedItem(str(uuid.UUID(bulk)), int(item))
        except ValueError:
            return None
    return None


def completion_event_id(bulk_uuid: str) -> str:
    """The same bulk always gives the same event id, so a reader can tell a copy by its id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"streamer:import-completed:{bulk_uuid}"))


def _ms(value: datetime | None) -> int:
    return int(value.timestamp() * 1000) if value is not None else 0


def completion_record(
    bulk: Mapping[str, Any], counts: Mapping[str, int], completed_at: datetime
) -> dict[str, Any]:
    """The ``ImportCompleted`` record (JSON-safe: timestamps as epoch milliseconds)."""
    bulk_uuid = str(bulk["bulk_uuid"])
    return {
        "event_id": completion_event_id(bulk_uuid),
        "bulk_uuid": bulk_uuid,
        "request_id": bulk["request_id"],
        "occurred_at": _ms(completed_at),
        "accepted_at": _ms(bulk["accepted_at"]),
        "items_total": int(bulk["items_total"]),
        "accepted": int(bulk["accepted"]),
        "rejected": int(bulk["rejected"]),
        "superseded": int(bulk["superseded"]),
        "undeliverable": int(bulk["undeliverable"]),
        "counts": {outcome: int(counts.get(outcome, 0)) for outcome in OUTCOMES},
    }
