"""Input files into events and acknowledgments: JSON lines, the connector's bulk payload, bad input."""

from __future__ import annotations

import json

import pytest

from streamer.contract.errors import InvalidEvent
from streamer.contract.ingest import VersionClock, detect_format, parse_bulk, parse_jsonl

pytestmark = pytest.mark.unit


def lines(*objects: object) -> list[str]:
    return [o if isinstance(o, str) else json.dumps(o) for o in objects]


def test_jsonl_events_get_ids_versions_and_sources_filled_in() -> None:
    out = parse_jsonl(
        lines(
            {"type": "media", "sku": "A", "images": [{"file_path": "a.jpg", "roles": ["base"]}]},
            {"type": "ProductChanged", "sku": "A", "op": "DELETE", "version": 7},
        ),
        clock=VersionClock(),
        source="pim",
    )
    assert not out.errors
    (_, media), (_, product) = out.events
    assert media.images[0].file_path == "/a.jpg" and media.source == "pim" and media.version > 0
    assert product.version == 7 and product.op.value == "DELETE"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        pytest.param("{not json", "malformed_json", id="malformed-json"),
        pytest.param("[1, 2]", "malformed_json", id="not-an-object"),
        pytest.param({"type": "Nope", "sku": "A"}, "unknown_event_type", id="unknown-type"),
        pytest.param({"sku": "A"}, "unknown_event_type", id="missing-type"),
        pytest.param({"type": "media", "images": []}, "missing_field", id="missing-sku"),
        pytest.param(
            {"type": "media", "sku": "A", "images": "x"}, "invalid_event", id="wrong-type"
        ),
        pytest.param(
            {"type": "media", "sku": "A" * 65, "images": []}, "invalid_sku", id="overlong-sku"
        ),
        pytest.param({"type": "media", "sku": " ", "images": []}, "invalid_sku", id="empty-sku"),
        pytest.param(
            {"type": "media", "sku": "A", "images": [{"file_path": "../x"}]},
            "invalid_file_path",
            id="dotdot",
        ),
        pytest.param(
            {"type": "product", "sku": "A", "bogus": 1}, "unknown_field", id="unknown-field"
        ),
        pytest.param(
            {"type": "media", "sku": "A", "version": -1, "images": []},
            "invalid_event",
            id="negative-version",
        ),
    ],
)
def test_bad_lines_are_rejected_with_reason_and_line_number(line, reason: str) -> None:
    out = parse_jsonl(lines({"type": "product", "sku": "OK"}, line), clock=VersionClock())
    assert out.errors
    ack = out.acks[1]
    assert (ack.status, ack.reason) == ("rejected", reason)
    assert ack.error_message.startswith("line 2:")
    assert [a.status for a in out.acks[:1]] == ["accepted"]
    assert len(out.events) == 1


def test_bulk_payload_dedupes_by_sku_last_wins_and_rejects_bad_items() -> None:
    payload = {
        "request": {
            "request_id": "op-12345",
            "items": [
                {
                    "sku": "SKU-001",
                    "images": [{"file_path": "old.jpg", "label": "x", "roles": ["base"]}],
                },
                {"sku": "SKU-002", "images": [{"file_path": "b.jpg"}]},
                {"sku": "", "images": [{"file_path": "c.jpg"}]},
                {"sku": "SKU-003", "images": []},
                {"sku": "SKU-004", "images": [{"label": "no path"}]},
                {"sku": "SKU-001", "images": [{"file_path": "new.jpg"}], "mode": "REPLACE"},
            ],
        }
    }
    out = parse_bulk(payload, clock=VersionClock())
    ack = out.acknowledgment()
    assert ack["request_id"] == "op-12345" and ack["errors"] is True
    assert [i["status"] for i in ack["request_items"]] == [
        "superseded",
        "accepted",
        "rejected",
        "rejected",
        "rejected",
        "accepted",
    ]
    assert [i["reason"] for i in ack["request_items"][2:5]] == [
        "invalid_sku",
        "empty_images",
        "missing_file_path",
    ]
    skus = [(e.sku, e.mode.value, e.images[0].file_path, e.request_id) for _, e in out.events]
    assert skus == [
        ("SKU-002", "UPSERT", "/b.jpg", "op-12345"),
        ("SKU-001", "REPLACE", "/new.jpg", "op-12345"),
    ]
    assert ack["request_items"][0]["data_hash"] == ack["request_items"][5]["data_hash"]


def test_bulk_payload_without_items_is_an_error() -> None:
    with pytest.raises(InvalidEvent):
        parse_bulk({"request": {"request_id": "r"}}, clock=VersionClock())


def test_detect_format() -> None:
    assert detect_format('{"request": {"items": []}}') == "bulk"
    assert detect_format('{"type": "media"}\n{"type": "media"}') == "jsonl"


def test_versions_from_the_clock_are_strictly_increasing() -> None:
    clock = VersionClock()
    versions = [clock.next() for _ in range(1000)]
    assert versions == sorted(set(versions))
