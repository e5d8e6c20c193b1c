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
    "ItemState",
    "Problem",
]


class AckItem(BaseModel):
    id: int = Field(description="the item's position in the request (1-based), or its line")
    sku: str | None
    data_hash: str = Field(description="stable hash of the SKU, for correlation")
    status: Literal["accepted", "rejected", "superseded", "undeliverable"]
    reason: str | None = Field(description="machine-readable reason when not accepted")
    error_message: str | None
    event_id: str | None = Field(description="the published event's id (accepted items)")


class Acknowledgment(BaseModel):
    bulk_uuid: str | None = Field(description="track the request with GET /v1/bulks/{bulk_uuid}")
    request_id: str
    request_items: list[AckItem]
    errors: bool = Field(description="true when any item was rejected or undeliverable")
    message: str | None = None


class Problem(BaseModel):
    detail: str
    reason: str | None = None


class BulkCounts(BaseModel):
    pending: int
    written: int
    noop: int
    partial: int
    dead_lettered: int
    stale: int
    duplicate: int


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
