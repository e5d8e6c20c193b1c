"""What the receivers get: one event per request, or batches, as the seeds' receivers expect. Pure.

One event::

    {"type": "gallery", "id": SKU, "action": "updated"|"deleted", "timestamp": ISO-8601,
     "data": {...GalleryUpdated as JSON...}}

(``"type": "product"`` with the ``ProductChanged`` event as ``data`` when product events
are forwarded too). A batch::

    {"type": "batch", "batch_id": ..., "timestamp": ..., "items": [event, ...]}

Every body is a function of the events alone (the timestamp is the event's, not the
send time), so a retry or a redelivery sends the same bytes under the same
``webhook-id``: one event's id is derived from its ``event_id``, a batch's from the
``event_id`` of its items in order (the ``batch_id`` is that id too).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "Delivery",
    "Item",
    "batch_webhook_id",
    "event_webhook_id",
    "gallery_item",
    "iso_timestamp",
    "pack",
    "product_item",
]

_NAMESPACE = uuid.UUID("5f0c6c2e-8a3b-4f8e-9a53-2f1a7c0d9b11")


def iso_timestamp(value: datetime) -> str:
    """ISO-8601 in UTC with milliseconds and a ``Z``, as the seeds' payloads write it."""
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return aware.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_timestamp(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def event_webhook_id(event_id: str) -> str:
    return "msg_" + uuid.UUID(str(event_id)).hex


def batch_webhook_id(event_ids: Iterable[str]) -> str:
    return "msg_" + uuid.uuid5(_NAMESPACE, "batch:" + ",".join(event_ids)).hex


@dataclass
class Item:
    """One event to deliver, as its JSON object, with the messages that carried it (a
    re-published outcome has the same ``event_id``: it is delivered once per batch)."""

    event_id: str
    sku: str
    timestamp: str
    body: bytes
    messages: list[Any] = field(default_factory=list)


def gallery_item(record: dict[str, Any]) -> Item:
    """``record`` is a decoded ``GalleryUpdated``."""
    data = _jsonable(record)
    timestamp = data["occurred_at"]
    obj = {
        "type": "gallery",
        "id": data["sku"],
        "action": "deleted" if data["deleted"] else "updated",
        "timestamp": timestamp,
        "data": data,
    }
    return Item(str(data["event_id"]), data["sku"], timestamp, _dumps(obj))


def product_item(event: dict[str, Any]) -> Item:
    """``event`` is a ``ProductChanged`` as JSON (``model_dump(mode="json")``)."""
    timestamp = iso_timestamp(datetime.fromisoformat(event["occurred_at"]))
    data = {**event, "occurred_at": timestamp}
    obj = {
        "type": "product",
        "id": data["sku"],
        "action": "deleted" if data.get("op") == "DELETE" else "updated",
        "timestamp": timestamp,
        "data": data,
    }
    return Item(str(data["event_id"]), data["sku"], timestamp, _dumps(obj))


@dataclass(frozen=True)
class Delivery:
    """One request's worth: its id, body, the SKUs it carries (for ordering) and its items."""

    webhook_id: str
    body: bytes
    items: tuple[Item, ...]

    @property
    def skus(self) -> frozenset[str]:
        return frozenset(item.sku for item in self.items)

    @property
    def messages(self) -> list[Any]:
        return [msg for item in self.items for msg in item.messages]


def _single(item: Item) -> Delivery:
    return Delivery(event_webhook_id(item.event_id), item.body, (item,))


def _batch(items: Sequence[Item]) -> Delivery:
    webhook_id = batch_webhook_id(item.event_id for item in items)
    head = _dumps(
        {"type": "batch", "batch_id": webhook_id, "timestamp": max(i.timestamp for i in items)}
    )
    body = head[:-1] + b',"items":[' + b",".join(i.body for i in items) + b"]}"
    return Delivery(webhook_id, body, tuple(items))


# The batch envelope around the items: {"type":"batch","batch_id":"msg_<32>","timestamp":"<24>","items":[]}
_ENVELOPE_BYTES = 110


def pack(items: Sequence[Item], *, max_events: int, max_bytes: int) -> list[Delivery]:
    """Deliveries for ``items`` (in the order given, which keeps each SKU's order).

    ``max_events`` 1 sends each event on its own; otherwise consecutive items fill a
    batch until the next one would pass ``max_events`` or ``max_bytes`` (an item larger
    than ``max_bytes`` on its own still goes, alone in its batch).
    """
    if max_events <= 1:
        return [_single(item) for item in items]
    out: list[Delivery] = []
    chunk: list[Item] = []
    size = _ENVELOPE_BYTES
    for item in items:
        extra = len(item.body) + 1
        if chunk and (len(chunk) >= max_events or size + extra > max_bytes):
            out.append(_batch(chunk))
            chunk, size = [], _ENVELOPE_BYTES
        chunk.append(item)
        size += extra
    if chunk:
        out.append(_batch(chunk))
    return out
