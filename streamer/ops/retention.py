"""How long each bookkeeping table keeps its rows, and which rows its retention deletes.

Every long-running process (``consume``, ``forward``, ``replicate``, ``objects consume``,
``serve``) runs the runtime's pruner over these rules (``runtime.retention``); an advisory
lock per table lets one of them prune it at a time. Bookkeeping only: galleries, offsets,
the object index and the replicator's records are state and are never pruned.

A new bookkeeping table gets one setting in ``RetentionSettings`` and one entry in
``bookkeeping``.

What retention means for de-duplication (README, *Retention*): an event id is recognised
(a redelivery is ``duplicate``, a reuse with other content ``duplicate_event_id``) while
its ``event_outcomes`` row lives, ``STREAMER_RETENTION_EVENT_OUTCOMES_DAYS`` after it was
recorded; later the event is folded again like a new one, and the SKU's stored versions
keep it stale (older than what is stored) or make it a no-op (the same version, the same
content).
"""

from __future__ import annotations

from pydantic import Field

from streamer.config import Section
from streamer.runtime.retention import Pruning, Retention

__all__ = ["RetentionSettings", "bookkeeping", "pruning"]


class RetentionSettings(Section):
    """Days each bookkeeping table keeps a row (0 = forever), and how the pruner paces itself."""

    retention_event_outcomes_days: float = Field(
        30, ge=0, description="event_outcomes: the de-duplication window by event id"
    )
    retention_bulk_items_days: float = Field(30, ge=0, description="bulk_items of settled bulks")
    retention_request_outcomes_days: float = Field(
        30, ge=0, description="request_outcomes: counts per request_id, after their last change"
    )
    retention_import_completions_days: float = Field(
        90, ge=0, description="bulks with their import_completions row and any items left"
    )
    retention_dead_letter_replays_days: float = Field(90, ge=0, description="dead_letter_replays")
    retention_idempotency_keys_days: float = Field(
        30, ge=0, description="idempotency_keys: how long the intake replays a key's answer"
    )
    retention_interval_s: float = Field(300, gt=0, description="pause between pruning rounds")
    retention_batch_rows: int = Field(1000, ge=1, le=100_000, description="rows per transaction")


def _oldest(table: str, key: str, age: str, where: str = "") -> str:
    """Up to $2 rows of ``table`` older than $1, oldest first, none the hot path holds;
    ``key``: the primary key's columns, comma-separated."""
    more = f" AND {where}" if where else ""
    return (
        f"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table}"
        f" WHERE {age} < $1{more} ORDER BY {age} LIMIT $2 FOR UPDATE SKIP LOCKED)"
    )


# A bulk whose completion is queued but not yet acknowledged stays until the relay published it.
_UNPUBLISHED = (
    "EXISTS (SELECT 1 FROM import_completions c"
    " WHERE c.bulk_uuid = b.bulk_uuid AND c.published_at IS NULL)"
)
# Items of bulks older than $1, oldest bulks first; ``{settled}`` says which bulks may lose them.
_BULK_ITEMS = """
DELETE FROM bulk_items i USING (
    SELECT o.bulk_uuid, o.item_id FROM bulk_items o JOIN bulks b ON b.bulk_uuid = o.bulk_uuid
    WHERE b.created_at < $1 AND {settled}
    ORDER BY b.created_at LIMIT $2 FOR UPDATE OF o SKIP LOCKED
) old
WHERE i.bulk_uuid = old.bulk_uuid AND i.item_id = old.item_id
"""
# A bulk that may still complete keeps its items: without them it would look complete, and
# the relay would announce an ImportCompleted with nothing counted.
_SETTLED = (
    f"(b.completed_at IS NOT NULL OR b.state NOT IN ('accepted', 'partial')) AND NOT {_UNPUBLISHED}"
)


def bookkeeping(settings: RetentionSettings) -> list[Retention]:
    """Every bookkeeping table's rule, in the order a round prunes them. A new bookkeeping
    table is one more entry here (``_oldest(table, key, "created_at")`` for most), with its
    ``retention_*_days`` setting above."""
    s = settings
    return [
        Retention(
            "event_outcomes",
            "STREAMER_RETENTION_EVENT_OUTCOMES_DAYS",
            s.retention_event_outcomes_days,
            (_oldest("event_outcomes", "event_id", "recorded_at"),),
        ),
        Retention(
            "request_outcomes",
            "STREAMER_RETENTION_REQUEST_OUTCOMES_DAYS",
            s.retention_request_outcomes_days,
            (_oldest("request_outcomes", "request_id, outcome", "updated_at"),),
        ),
        Retention(
            "bulk_items",
            "STREAMER_RETENTION_BULK_ITEMS_DAYS",
            s.retention_bulk_items_days,
            (_BULK_ITEMS.format(settled=_SETTLED),),
        ),
        # A bulk goes whole: its items first (in batches, whatever their own retention),
        # then the bulk row, which takes its import_completions row with it.
        Retention(
            "import_completions",
            "STREAMER_RETENTION_IMPORT_COMPLETIONS_DAYS",
            s.retention_import_completions_days,
            (
                _BULK_ITEMS.format(settled=f"NOT {_UNPUBLISHED}"),
                _oldest("bulks b", "bulk_uuid", "created_at", f"NOT {_UNPUBLISHED}"),
            ),
        ),
        Retention(
            "idempotency_keys",
            "STREAMER_RETENTION_IDEMPOTENCY_KEYS_DAYS",
            s.retention_idempotency_keys_days,
            (_oldest("idempotency_keys", "principal, route, key", "created_at"),),
        ),
        Retention(
            "dead_letter_replays",
            "STREAMER_RETENTION_DEAD_LETTER_REPLAYS_DAYS",
            s.retention_dead_letter_replays_days,
            (
                _oldest(
                    "dead_letter_replays", "dlq_topic, dlq_partition, dlq_offset", "replayed_at"
                ),
            ),
        ),
    ]


def pruning(settings: RetentionSettings) -> Pruning:
    """What every long-running process hands its pruner."""
    return Pruning(
        bookkeeping(settings),
        interval_s=settings.retention_interval_s,
        batch_rows=settings.retention_batch_rows,
    )
