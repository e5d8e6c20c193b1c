"""The API's JSON shapes, for validation of what comes in and the OpenAPI documentation."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

__all__ = [
    "AckItem",
    "Acknowledgment",
    "BulkCounts",
    "BulkList",
    "BulkStatus",
    "Completion",
    "FinalItem",
    "ItemState",
    "Problem",
]


class BulkCounts(BaseModel):
    """Accepted items by outcome (pending until processed)."""

    pending: int
    written: int
    noop: int
    partial: int
    dead_lettered: int
    stale: int
    duplicate: int


class AckItem(BaseModel):
    id: int = Field(description="the item's position in the request (1-based), or its line")
    sku: str | None
    data_hash: str = Field(description="stable hash of the SKU, for correlation")
    status: Literal["accepted", "rejected", "superseded", "undeliverable"]
    reason: str | None = Field(description="machine-readable reason when not accepted")
    error_message: str | None
    event_id: str | None = Field(description="the published event's id (accepted items)")


class Acknowledgment(BaseModel):
    bulk_uuid: str | None = Field(
        description="track the request with GET /v1/bulks/{bulk_uuid}; null when no item was "
        "accepted (nothing was published)"
    )
    request_id: str
    request_items: list[AckItem]
    errors: bool = Field(description="true when any item was rejected or undeliverable")
    detail: str | None = Field(None, description="what happened, for a person")
    reason: str | None = Field(None, description="on 503: why not every item went out")
    tracking_error: str | None = None


class FinalItem(AckItem):
    outcome: str | None = Field(
        description="written, noop, partial, dead_lettered, stale or duplicate; null when the "
        "item was not accepted"
    )
    outcome_reason: str | None = Field(description="why, for partial and dead_lettered")


class Completion(BaseModel):
    """The answer to ``Prefer: wait=N`` when the bulk completed in time."""

    bulk_uuid: str | None
    request_id: str
    complete: bool = Field(description="always true here: every accepted item was processed")
    completed_at: datetime | None
    counts: BulkCounts
    request_items: list[FinalItem]
    errors: bool = Field(
        description="true when any item was rejected, undeliverable, partial or dead-lettered"
    )
    detail: str | None = None


class Problem(BaseModel):
    """Every error answer: a stable reason for programs, a message for people."""

    reason: str = Field(description="machine-readable, stable")
    detail: str = Field(description="what went wrong and what to do, for a person")


class ItemState(BaseModel):
    id: int
    sku: str | None
    status: str
    reason: str | None
    error_message: str | None
    event_id: str | None
    outcome: str | None = Field(description="pending until processed; null when not accepted")
    outcome_reason: str | None
    processed_at: datetime | None


class BulkStatus(BaseModel):
    bulk_uuid: str
    request_id: str
    kind: str
    state: Literal["publishing", "accepted", "partial", "failed"]
    items_total: int
    accepted: int
    rejected: int
    superseded: int
    undeliverable: int
    counts: BulkCounts
    processed: int
    complete: bool
    created_at: datetime
    accepted_at: datetime | None
    completed_at: datetime | None
    items: list[ItemState] | None = None
    next_after: int | None = Field(None, description="pass as ?after= for the next page of items")


class BulkList(BaseModel):
    bulks: list[BulkStatus]
