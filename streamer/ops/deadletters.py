"""A dead letter as operators see it, the same in ``streamer dlq show`` and the console."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from streamer.contract.codec import Codec
from streamer.contract.events import EventType, parse_event
from streamer.errors import StreamerError
from streamer.runtime.database import connect
from streamer.runtime.deadletters import DeadLetterRecord

__all__ = ["dead_letter_view", "decoded_event", "replayed_marks", "when"]


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


async def replayed_marks(dsn: str, topic: str) -> dict[tuple[int, int], datetime]:
    """When each dead letter of the topic was replayed, by (partition, offset): what
    ``streamer dlq replay`` and the console recorded (each is replayed at most once)."""
    import asyncpg

    async with connect(dsn) as conn:
        try:
            rows = await conn.fetch(
                "SELECT dlq_partition, dlq_offset, replayed_at FROM dead_letter_replays"
                " WHERE dlq_topic = $1",
                topic,
            )
        except asyncpg.UndefinedTableError:
            return {}  # never migrated: nothing was ever replayed here
    return {(r["dlq_partition"], r["dlq_offset"]): r["replayed_at"] for r in rows}


def dead_letter_view(
    r: DeadLetterRecord, replayed: dict[tuple[int, int], datetime] | None = None
) -> dict[str, Any]:
    replayed_at = (replayed or {}).get((r.dlq_partition, r.dlq_offset))
    return {
        "dlq": f"{r.dlq_partition}:{r.dlq_offset}",
        "replayed_at": replayed_at.isoformat(timespec="seconds") if replayed_at else None,
        "reason": r.reason,
        "message": r.message,
        "exception_class": r.exception_class,
        "original": f"{r.topic}[{r.partition}]@{r.offset}",
        "sku": r.detail("sku") or r.key_text,
        "attempts": r.attempts,
        "job": r.job,
        "group": r.group_id,
        "details": dict(r.details),
        "first_failure": when(r.first_failure_ms),
        "last_failure": when(r.last_failure_ms),
        "event": decoded_event(r.value),
    }
