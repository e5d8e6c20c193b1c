"""How a tracked message names its item, and the ImportCompleted record."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from streamer.contract.codec import Codec
from streamer.tracking.model import (
    BULK_ITEM_HEADER,
    completion_event_id,
    completion_record,
    item_header,
    tracked_item,
)

pytestmark = pytest.mark.unit

BULK = str(uuid.uuid4())


def test_the_item_header_round_trips_among_other_headers() -> None:
    headers = [("traceparent", b"00-abc"), item_header(BULK, 42)]
    found = tracked_item(headers)
    assert found is not None and (found.bulk_uuid, found.item_id) == (BULK, 42)


@pytest.mark.parametrize(
    "headers",
    [
        None,
        [],
        [("other", b"x")],
        [(BULK_ITEM_HEADER, b"not-a-uuid/1")],
        [(BULK_ITEM_HEADER, f"{BULK}/x".encode())],
        [(BULK_ITEM_HEADER, None)],
    ],
)
def test_untracked_or_foreign_headers_name_no_item(headers) -> None:
    assert tracked_item(headers) is None


def test_the_completion_record_encodes_and_its_id_depends_on_the_bulk_only() -> None:
    bulk = {
        "bulk_uuid": BULK,
        "request_id": "op-1",
        "accepted_at": datetime(2026, 1, 1, tzinfo=UTC),
        "items_total": 5,
        "accepted": 3,
        "rejected": 1,
        "superseded": 1,
        "undeliverable": 0,
    }
    record = completion_record(bulk, {"written": 2, "noop": 1}, datetime(2026, 1, 2, tzinfo=UTC))
    assert record["event_id"] == completion_event_id(BULK) != completion_event_id(str(uuid.uuid4()))
    assert record["counts"] == {
        "written": 2,
        "noop": 1,
        "partial": 0,
        "dead_lettered": 0,
        "stale": 0,
        "duplicate": 0,
    }
    codec = Codec()
    value = codec.encode_record(record, type_name="ImportCompleted", topic="t")
    decoded = codec.decode(value)
    assert decoded.type_name == "ImportCompleted"
    assert str(decoded.data["bulk_uuid"]) == BULK and decoded.data["counts"]["written"] == 2
    assert decoded.data["occurred_at"] == datetime(2026, 1, 2, tzinfo=UTC)
