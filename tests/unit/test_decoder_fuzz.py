"""The decoder on arbitrary bytes: every input is an event, or an error that names its reason
(a dead letter's), never another exception. Both decoders (the models' and the lean hot
path's), both framings, and mutations of valid messages, which reach deep into the Avro body."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.contract.codec import SINGLE_OBJECT_MAGIC, Codec
from streamer.contract.errors import DecodeError, InvalidEvent
from streamer.contract.events import MediaGalleryChanged, ProductChanged
from streamer.contract.schemas import known_schemas

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
REASONS = {
    "null_value",
    "truncated",
    "unknown_framing",
    "unknown_schema",
    "unknown_schema_id",
    "malformed_avro",
    "invalid_event",
    "invalid_sku",
    "invalid_event_id",
    "missing_field",
    "unknown_field",
    "too_many_images",
    "unknown_event_type",
}


def _media() -> MediaGalleryChanged:
    return MediaGalleryChanged.model_validate(
        {
            "event_id": str(uuid.uuid4()),
            "sku": "SKU-1",
            "version": 1_700_000_000_000,
            "occurred_at": NOW,
            "source": "pim",
            "request_id": "req",
            "mode": "REPLACE",
            "images": [
                {"file_path": f"/a/{i}.jpg", "label": "l", "position": i, "roles": ["base"]}
                for i in range(3)
            ],
        }
    )


def _product() -> ProductChanged:
    return ProductChanged.model_validate(
        {
            "event_id": str(uuid.uuid4()),
            "sku": "SKU-1",
            "version": 7,
            "occurred_at": NOW,
            "source": "shop",
            "name": "Shirt",
        }
    )


SINGLE = Codec()
REGISTRY = Codec(SchemaRegistryClient.new_client({"url": f"mock://fuzz-{uuid.uuid4().hex}"}))
VALID = [
    SINGLE.encode(_media(), topic="t"),
    SINGLE.encode(_product(), topic="t"),
    REGISTRY.encode(_media(), topic="t"),
    REGISTRY.encode(_product(), topic="t"),
]
FINGERPRINTS = sorted(known_schemas())


def outcome(codec: Codec, value: bytes) -> tuple[str, Any]:
    """What both decoders make of ``value``; they must agree."""
    results = []
    for decode in (codec.decode_event, codec.decode_lean):
        try:
            event = decode(value)
        except (DecodeError, InvalidEvent) as exc:
            results.append(("error", exc.reason))
            failure: DecodeError | InvalidEvent | None = exc
        else:
            failure = None
            results.append(("event", (event.event_id, event.sku, event.version)))
        if failure is not None:
            assert failure.reason in REASONS, failure.reason
            assert failure.message and failure.retriable is False
    assert results[0] == results[1]
    return results[0]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid message with a few bytes flipped, inserted, removed or cut off."""
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "cut", "extend"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and data:
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "cut":
            del data[at:]
        else:
            data += draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


framed_garbage = st.one_of(
    st.builds(lambda fp, body: SINGLE_OBJECT_MAGIC + fp + body, st.sampled_from(FINGERPRINTS), st.binary(max_size=200)),
    st.builds(lambda sid, body: b"\x00" + sid.to_bytes(4, "big") + body, st.integers(0, 2**32 - 1), st.binary(max_size=200)),
)  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300), framed_garbage, mutated()))
def test_any_bytes_give_an_event_or_a_reason(value: bytes) -> None:
    outcome(SINGLE, value)
    outcome(REGISTRY, value)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(VALID), st.binary(min_size=1, max_size=16))
def test_trailing_bytes_after_a_valid_record_are_malformed(valid: bytes, tail: bytes) -> None:
    codec = REGISTRY if valid[0] == 0 else SINGLE
    assert outcome(codec, valid + tail) == ("error", "malformed_avro")


def test_the_valid_messages_decode() -> None:
    assert [outcome(REGISTRY if v[0] == 0 else SINGLE, v)[0] for v in VALID] == ["event"] * 4
