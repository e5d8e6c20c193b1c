"""The codec: both framings round-trip, interoperate with confluent-kafka, and reject bad bytes by reason."""

from __future__ import annotations

import io
import json
import os
import struct
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import parse_schema, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.contract.codec import SINGLE_OBJECT_MAGIC, Codec, event_record, registry_config
from streamer.contract.errors import DecodeError
from streamer.contract.events import MediaGalleryChanged, ProductChanged
from streamer.contract.schemas import schema_dir
from tests.samples import unknown_schema_message

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 8, 0, 0, 123000, tzinfo=UTC)


def media_event(**kw) -> MediaGalleryChanged:
    data = {
        "event_id": str(uuid.uuid4()),
        "sku": "SKU-1",
        "version": 1700000000000,
        "occurred_at": NOW,
        "source": "pim",
        "request_id": "req-1",
        "mode": "REPLACE",
        "images": [
            {
                "file_path": f"/a/{i}.jpg",
                "label": f"l{i}",
                "position": i,
                "roles": ["base", "hero"],
                "etag": "abc",
            }
            for i in range(5)
        ],
    }
    data.update(kw)
    return MediaGalleryChanged.model_validate(data)


def product_event() -> ProductChanged:
    return ProductChanged.model_validate(
        {
            "event_id": str(uuid.uuid4()),
            "sku": "SKU-1",
            "version": 1,
            "occurred_at": NOW,
            "source": "shop",
            "op": "DELETE",
            "name": "Shirt",
            "enabled": False,
        }
    )


def registry() -> SchemaRegistryClient:
    return SchemaRegistryClient.new_client({"url": f"mock://test-{uuid.uuid4().hex}"})


@pytest.mark.parametrize("framing", ["single-object", "confluent"])
@pytest.mark.parametrize("make", [media_event, product_event], ids=["media", "product"])
def test_round_trip(framing: str, make) -> None:
    codec = Codec(registry() if framing == "confluent" else None)
    event = make()
    value = codec.encode(event, topic="catalog.media.v1")
    assert value[:2] == SINGLE_OBJECT_MAGIC if framing == "single-object" else value[0] == 0
    assert codec.decode_event(value) == event


def test_unknown_roles_survive_the_wire_to_be_counted() -> None:
    codec = Codec()
    decoded = codec.decode_event(codec.encode(media_event(), topic="t"))
    assert decoded.images[0].unknown_roles == ("hero",)


def test_confluent_serializer_output_decodes_and_codec_output_deserializes() -> None:
    client = registry()
    schema_str = (schema_dir() / "MediaGalleryChanged.avsc").read_text()
    ctx = SerializationContext("catalog.media.v1", MessageField.VALUE)
    event = media_event()
    serializer = AvroSerializer(client, schema_str, conf={"auto.register.schemas": True})
    value = serializer(event_record(event), ctx)
    assert Codec(client).decode_event(value) == event

    ours = Codec(client).encode(event, topic="catalog.media.v1")
    record = AvroDeserializer(client)(ours, ctx)
    assert record["sku"] == "SKU-1" and len(record["images"]) == 5


def history(name: str) -> dict:
    return json.loads((schema_dir() / "history" / f"{name}.v1.avsc").read_text())


@pytest.mark.parametrize("framing", ["single-object", "confluent"])
def test_events_written_with_every_earlier_schema_decode_with_the_current_one(framing: str) -> None:
    client = registry()
    codec = Codec(client if framing == "confluent" else None)
    old_media = {
        "event_id": str(uuid.uuid4()),
        "sku": "OLD-1",
        "version": 5,
        "occurred_at": NOW,
        "source": "legacy",
        "mode": "UPSERT",
        "images": [
            {
                "file_path": "x.jpg",
                "label": None,
                "position": 1,
                "disabled": False,
                "roles": ["base"],
            }
        ],
    }
    old_product = {
        "event_id": str(uuid.uuid4()),
        "sku": "OLD-1",
        "version": 6,
        "occurred_at": NOW,
        "source": "legacy",
        "op": "UPSERT",
        "name": "n",
    }
    for name, record in (("MediaGalleryChanged", old_media), ("ProductChanged", old_product)):
        raw = history(name)
        parsed = parse_schema(raw)
        buf = io.BytesIO()
        if framing == "confluent":
            from confluent_kafka.schema_registry import Schema

            schema_id = client.register_schema(f"old-{name}-value", Schema(json.dumps(raw), "AVRO"))
            buf.write(b"\x00" + struct.pack(">I", schema_id))
        else:
            buf.write(
                SINGLE_OBJECT_MAGIC
                + bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
            )
        schemaless_writer(buf, parsed, record)
        event = codec.decode_event(buf.getvalue())
        assert event.sku == "OLD-1" and event.request_id is None
        if name == "ProductChanged":
            assert event.enabled is True
        else:
            assert event.images[0].etag is None and event.images[0].file_path == "/x.jpg"


GOOD = Codec().encode(media_event(), topic="t")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param(None, "null_value", id="null"),
        pytest.param(b"", "truncated", id="empty"),
        pytest.param(
            os.urandom(64).replace(b"\x00", b"\x01").replace(b"\xc3", b"\xc4"),
            "unknown_framing",
            id="random-bytes",
        ),
        pytest.param(GOOD[:40], "malformed_avro", id="truncated-avro"),
        pytest.param(GOOD + b"\x00\x01", "malformed_avro", id="trailing-bytes"),
        pytest.param(unknown_schema_message(), "unknown_schema", id="unknown-fingerprint"),
        pytest.param(
            b"\x00\x00\x00\x99\x99" + b"\x02" * 10, "unknown_schema_id", id="unknown-registry-id"
        ),
        pytest.param(SINGLE_OBJECT_MAGIC + b"\x01\x02", "truncated", id="short-header"),
    ],
)
def test_bad_bytes_raise_decode_error_with_reason(value, reason: str) -> None:
    codec = Codec(registry())
    with pytest.raises(DecodeError) as info:
        codec.decode_event(value)
    assert info.value.reason == reason
    assert info.value.retriable is False


def test_event_that_decodes_but_breaks_the_contract_is_invalid_not_undecodable() -> None:
    from streamer.contract.errors import InvalidEvent

    codec = Codec()
    record = event_record(media_event())
    record["sku"] = "   "
    value = codec.encode_record(record, type_name="MediaGalleryChanged", topic="t")
    with pytest.raises(InvalidEvent) as info:
        codec.decode_event(value)
    assert info.value.reason == "invalid_sku"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://reg:8081", {"url": "http://reg:8081"}),
        ("mock://x", {"url": "mock://x"}),
        (
            "https://key:p%40ss@reg.example/apis/ccompat/v7",
            {"url": "https://reg.example/apis/ccompat/v7", "basic.auth.user.info": "key:p@ss"},
        ),
        (
            "https://key:pw@a:1,https://key:pw@b:2",
            {"url": "https://a:1,https://b:2", "basic.auth.user.info": "key:pw"},
        ),
    ],
)
def test_registry_credentials_leave_the_url_that_gets_logged(url: str, expected: dict) -> None:
    assert registry_config(url) == expected
    assert Codec.for_registry(url).registry is not None  # the client takes that configuration


prefix_records = st.fixed_dictionaries(
    {
        "event_id": st.uuids().map(str),
        "sku": st.text(max_size=70),
        "version": st.integers(-(2**63), 2**63 - 1),
        "occurred_at": st.integers(-(10**12), 10**14).map(
            lambda ms: datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
        ),
        "source": st.text(max_size=300),
        "request_id": st.one_of(st.none(), st.text(max_size=300)),
        "mode": st.sampled_from(["UPSERT", "REPLACE"]),
        "images": st.lists(
            st.fixed_dictionaries({"file_path": st.text(max_size=20), "roles": st.just([])}),
            max_size=3,
        ),
    }
)


@settings(max_examples=300, deadline=None)
@given(prefix_records, st.sampled_from(["single-object", "confluent"]))
def test_media_prefix_reads_the_common_fields_as_decode_does(record, framing: str) -> None:
    """Whatever the values (any text, any long), the fields read by hand before ``mode`` are
    those the full decode gives, and the rest of the bytes are the mode and images alone."""
    codec = Codec(registry() if framing == "confluent" else None)
    value = codec.encode_record(record, type_name="MediaGalleryChanged", topic="catalog.media.v1")
    found = codec.media_prefix(value)
    assert found is not None
    prefix, offset = found
    full = codec.decode(value).data
    assert prefix == {k: full[k] if k != "event_id" else str(full[k]) for k in prefix}
    other = {**record, "event_id": str(uuid.uuid4()), "sku": "x", "version": 7, "source": "s"}
    again = codec.encode_record(other, type_name="MediaGalleryChanged", topic="catalog.media.v1")
    moved = codec.media_prefix(again)
    assert moved is not None and again[moved[1] :] == value[offset:]
    for cut in range(len(value)):
        short = codec.media_prefix(value[:cut])  # never raises; short of the prefix: None
        assert short is None or short[1] <= cut


def test_media_prefix_is_for_media_events_of_the_current_schema_only() -> None:
    codec = Codec()
    assert codec.media_prefix(codec.encode(product_event(), topic="catalog.product.v1")) is None
    assert codec.media_prefix(b"\x01\x02junk") is None
    writer = parse_schema(history("MediaGalleryChanged"))
    old = media_event(request_id=None)
    buf = io.BytesIO()
    schemaless_writer(buf, writer, event_record(old) | {"images": []})
    framed = SINGLE_OBJECT_MAGIC + bytes.fromhex(
        fingerprint(to_parsing_canonical_form(writer), "CRC-64-AVRO")
    )
    assert codec.media_prefix(framed + buf.getvalue()) is None
