"""A dead letter as operators see it, the same in ``streamer dlq show`` and the console."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from streamer.contract.codec import Codec
from streamer.contract.events import EventType, parse_event
from streamer.errors import StreamerError
from streamer.runtime.deadletters import DeadLetterRecord

__all__ = ["dead_letter_view", "decoded_event", "when"]


def when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds") if ms else "-"


def decoded_event(value: bytes | None) -> dict[str, Any]:
    """The dead letter's event as the job read it, or why it could not be read."""
    try:
        decoded = Codec().decode(value)
    except StreamerError as exc:
        return {"decode_error": f"{exc.reason}: {exc}", "value_hex": (value or b"")[:64].hex()}
    record: dict[str, Any] = json.loads(json.dumps(decoded.data, default=str))
    if decoded.type_name not in (EventType.PRODUCT.value, EventType.MEDIA.value):
        return {"type": decoded.type_name, **record}
    try:
        return parse_event(decoded.type_name, decoded.data).model_dump(mode="json")
    except StreamerError as exc:
        return {"type": decoded.type_name, **record, "invalid": f"{exc.reason}: {exc}"}


def dead_letter_view(r: DeadLetterRecord) -> dict[str, Any]:
    return {
        "dlq": f"{r.dlq_partition}:{r.dlq_offset}",
        "reason": r.reason,
        "message": r.message,
        "exception_class": r.exception_class,
        "original": f"{r.topic}[{r.partition}]@{r.offset}",
        "sku": r.sku,
        "attempts": r.attempts,
        "job": r.job,
        "group": r.group_id,
        "details": dict(r.details),
        "first_failure": when(r.first_failure_ms),
        "last_failure": when(r.last_failure_ms),
        "event": decoded_event(r.value),
    }
