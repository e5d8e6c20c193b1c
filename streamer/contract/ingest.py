"""Turning input files into events and acknowledgments, before anything is published. Pure.

Two formats: JSON lines (one event per line, with a ``type``) and the bulk
payload of the gallery connector this product grew from
(``{"request": {"request_id": ..., "items": [{"sku": ..., "images": [...]}]}}``).
Every item gets an acknowledgment in that connector's spirit: ``accepted`` or
``rejected`` with the reason; bulk items are de-duplicated by SKU, last wins,
and the superseded ones are acknowledged as ``superseded``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from streamer.contract.errors import InvalidEvent
from streamer.contract.events import EventType, MediaGalleryChanged, ProductChanged, parse_event

__all__ = ["Ack", "Ingested", "VersionClock", "detect_format", "parse_bulk", "parse_jsonl"]

Event = ProductChanged | MediaGalleryChanged
Status = Literal["accepted", "rejected", "superseded", "undeliverable"]
_TYPE_ALIASES = {
    "mediagallerychanged": EventType.MEDIA,
    "media": EventType.MEDIA,
    "productchanged": EventType.PRODUCT,
    "product": EventType.PRODUCT,
}


class VersionClock:
    """Monotonic millisecond versions for events that arrive without one."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        self._last = max(int(time.time() * 1000), self._last + 1)
        return self._last


def data_hash(sku: str) -> str:
    return hashlib.sha256(sku.encode("utf-8")).hexdigest()[:16]


@dataclass
class Ack:
    id: int
    sku: str | None
    status: Status
    error_message: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sku": self.sku,
            "data_hash": data_hash(self.sku or str(self.id)),
            "status": self.status,
            "reason": self.reason,
            "error_message": self.error_message,
        }


@dataclass
class Ingested:
    request_id: str | None
    events: list[tuple[Ack, Event]] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)

    @property
    def errors(self) -> bool:
        return any(a.status in ("rejected", "undeliverable") for a in self.acks)

    def acknowledgment(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "request_items": [a.as_dict() for a in self.acks],
            "errors": self.errors,
        }


def detect_format(text: str) -> Literal["bulk", "jsonl"]:
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            whole = json.loads(stripped)
        except json.JSONDecodeError:
            return "jsonl"
        if isinstance(whole, dict) and isinstance(whole.get("request"), dict):
            return "bulk"
    return "jsonl"


def _fill(data: dict[str, Any], clock: VersionClock, source: str) -> dict[str, Any]:
    data = dict(data)
    data.setdefault("event_id", str(uuid.uuid4()))
    data.setdefault("occurred_at", datetime.now(UTC))
    data.setdefault("source", source)
    if data.get("version") is None:
        data["version"] = clock.next()
    return data


def _validate(kind: EventType, data: dict[str, Any]) -> Event:
    event = parse_event(kind, data)
    if isinstance(event, MediaGalleryChanged) and event.invalid_images:
        bad = event.invalid_images[0]
        raise InvalidEvent(
            bad.invalid_message or f"invalid image {bad.file_path!r}",
            reason=bad.invalid_reason or "invalid_image",
        )
    return event


def parse_jsonl(lines: Iterable[str], *, clock: VersionClock, source: str = "cli") -> Ingested:
    out = Ingested(request_id=None)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        ack = Ack(id=number, sku=None, status="accepted")
        out.acks.append(ack)
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            ack.status, ack.reason = "rejected", "malformed_json"
            ack.error_message = f"line {number}: not valid JSON: {exc.msg} (column {exc.colno})"
            continue
        if not isinstance(data, dict):
            ack.status, ack.reason = "rejected", "malformed_json"
            ack.error_message = f"line {number}: expected a JSON object, got {type(data).__name__}"
            continue
        ack.sku = data.get("sku") if isinstance(data.get("sku"), str) else None
        kind = _TYPE_ALIASES.get(str(data.pop("type", "")).lower())
        if kind is None:
            ack.status, ack.reason = "rejected", "unknown_event_type"
            ack.error_message = f"line {number}: unknown or missing event type; use MediaGalleryChanged or ProductChanged"
            continue
        try:
            event = _validate(kind, _fill(data, clock, source))
        except InvalidEvent as exc:
            ack.status, ack.reason = "rejected", exc.reason
            ack.error_message = f"line {number}: {exc.message}"
            continue
        ack.sku = event.sku
        out.events.append((ack, event))
        if out.request_id is None:
            out.request_id = event.request_id
    return out


REQUEST_ID_PATTERN = r"[^\x00-\x1f\x7f]{1,255}"
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)


def valid_request_id(value: object) -> bool:
    """A request id a person can read back: 1-255 characters, no control character."""
    return isinstance(value, str) and _REQUEST_ID.fullmatch(value) is not None


def parse_bulk(payload: dict[str, Any], *, clock: VersionClock, source: str = "bulk") -> Ingested:
    request = payload.get("request")
    if not isinstance(request, dict):
        raise InvalidEvent(
            'bulk payload needs a top-level "request" object', reason="malformed_bulk"
        )
    request_id = request.get("request_id")
    if request_id is None:
        request_id = f"bulk-{uuid.uuid4()}"
    elif not valid_request_id(request_id):
        raise InvalidEvent(
            '"request.request_id" must be a string of 1 to 255 characters without control '
            "characters",
            reason="invalid_request_id",
        )
    items = request.get("items")
    if not isinstance(items, list):
        raise InvalidEvent('bulk payload needs "request.items" as a list', reason="malformed_bulk")
    if not items:
        raise InvalidEvent('"request.items" is empty: nothing to take in', reason="malformed_bulk")
    out = Ingested(request_id=request_id)
    latest: dict[str, tuple[Ack, Event]] = {}
    for number, item in enumerate(items, start=1):
        ack = Ack(id=number, sku=None, status="accepted")
        out.acks.append(ack)
        if not isinstance(item, dict):
            ack.status, ack.reason, ack.error_message = (
                "rejected",
                "malformed_item",
                "item is not an object",
            )
            continue
        sku = item.get("sku")
        ack.sku = sku if isinstance(sku, str) else None
        images = item.get("images")
        if not isinstance(images, list) or not images:
            ack.status, ack.reason, ack.error_message = (
                "rejected",
                "empty_images",
                "item has no images",
            )
            continue
        if any(not isinstance(i, dict) or not i.get("file_path") for i in images):
            ack.status, ack.reason = "rejected", "missing_file_path"
            ack.error_message = "every image needs a file_path"
            continue
        data = {
            "sku": sku,
            "request_id": request_id,
            "mode": item.get("mode", "UPSERT"),
            "images": images,
            **({"version": item["version"]} if "version" in item else {}),
        }
        try:
            event = _validate(EventType.MEDIA, _fill(data, clock, source))
        except InvalidEvent as exc:
            ack.status, ack.reason, ack.error_message = "rejected", exc.reason, exc.message
            continue
        ack.sku = event.sku
        previous = latest.get(event.sku)
        if previous is not None:
            previous[0].status = "superseded"
            previous[0].error_message = f"superseded by item {number} for the same SKU (last wins)"
        latest[event.sku] = (ack, event)
    out.events = sorted(latest.values(), key=lambda pair: pair[0].id)
    return out
