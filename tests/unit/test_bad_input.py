"""Bad input of issue 16 that needs no server: each case ends as an event with a defined result
or as an error naming its reason, never as another exception."""

from __future__ import annotations

import base64
import io
import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from fastavro import parse_schema, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form
from typer.testing import CliRunner

from streamer.cli import app
from streamer.config import load_section
from streamer.contract.codec import SINGLE_OBJECT_MAGIC, Codec, event_record
from streamer.contract.errors import DecodeError, InvalidEvent
from streamer.contract.events import MAX_IMAGES_PER_EVENT, MAX_VERSION, parse_event
from streamer.contract.ingest import VersionClock, parse_bulk, parse_jsonl
from streamer.contract.lean import lean_event, lean_of
from streamer.contract.schemas import schema_dir
from streamer.errors import ConfigError
from streamer.forward.client import WebhookClient
from streamer.forward.settings import ForwardSettings
from streamer.forward.signing import SigningKeys
from streamer.gallery.fold import EventOutcome, FoldRules, fold
from streamer.gallery.state import ObjectInfo, SkuState
from streamer.replicate.settings import ReplicaSettings
from streamer.runtime.settings import KafkaSettings
from streamer.storage.settings import S3Settings

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
MEDIA = "MediaGalleryChanged"


def record(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "sku": "SKU-1",
        "version": 5,
        "occurred_at": NOW,
        "source": "pim",
        "request_id": None,
        "mode": "UPSERT",
        "images": [],
    }
    data.update(overrides)
    return data


def image(path: str, roles: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    return {
        "file_path": path,
        "label": None,
        "position": None,
        "disabled": False,
        "roles": roles or [],
        "etag": None,
        **kw,
    }


def both(value: dict[str, Any]) -> tuple[str, Any]:
    """The models' and the lean path's verdict on a decoded record; they must agree."""
    verdicts = []
    for parse in (lambda r: lean_of(parse_event(MEDIA, r)), lambda r: lean_event(MEDIA, r)):
        try:
            verdicts.append(("event", parse(dict(value))))
        except InvalidEvent as exc:
            verdicts.append(("invalid", exc.reason, exc.message))
    assert verdicts[0] == verdicts[1]
    return verdicts[0]


# -- schema evolution from a newer writer ------------------------------------------------------


def newer_writer_schema() -> dict[str, Any]:
    """Today's MediaGalleryChanged plus a field a newer producer added, with its default."""
    raw = json.loads((schema_dir() / f"{MEDIA}.avsc").read_text())
    raw["fields"].append({"name": "channel", "type": "string", "default": "web"})
    return raw


def newer_writer_bytes(prefix: bytes) -> bytes:
    parsed = parse_schema(newer_writer_schema())
    buf = io.BytesIO(prefix)
    buf.seek(len(prefix))
    data = event_record(parse_event(MEDIA, record(images=[image("a.jpg", ["base"])])))
    schemaless_writer(buf, parsed, {**data, "channel": "app"})
    return buf.getvalue()


def test_a_newer_writer_through_the_registry_decodes_its_new_field_ignored() -> None:
    client = SchemaRegistryClient.new_client({"url": f"mock://newer-{uuid.uuid4().hex}"})
    schema_id = client.register_schema("newer-value", Schema(json.dumps(newer_writer_schema())))
    value = newer_writer_bytes(b"\x00" + schema_id.to_bytes(4, "big"))
    codec = Codec(client)
    event = codec.decode_event(value)
    assert event.sku == "SKU-1" and event.images[0].roles == ("image",)
    assert codec.decode_lean(value) == lean_of(event)


def test_a_newer_writer_without_a_registry_is_an_unknown_schema_by_its_fingerprint() -> None:
    canonical = to_parsing_canonical_form(parse_schema(newer_writer_schema()))
    fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
    with pytest.raises(DecodeError) as info:
        Codec().decode_event(newer_writer_bytes(SINGLE_OBJECT_MAGIC + fp))
    assert info.value.reason == "unknown_schema"
    assert fp.hex() in info.value.message


# -- versions, positions and timestamps at the edges of their wire types -----------------------


@pytest.mark.parametrize("version", [0, 1, MAX_VERSION])
def test_every_avro_long_version_that_is_not_negative_is_an_event(version: int) -> None:
    codec = Codec()
    value = codec.encode_record(record(version=version), type_name=MEDIA, topic="t")
    assert codec.decode_lean(value).version == version


@pytest.mark.parametrize("version", [-1, -(2**63)])
def test_a_negative_version_is_invalid_and_names_the_field(version: int) -> None:
    codec = Codec()
    value = codec.encode_record(record(version=version), type_name=MEDIA, topic="t")
    for decode in (codec.decode_event, codec.decode_lean):
        with pytest.raises(InvalidEvent) as info:
            decode(value)
        assert info.value.reason == "invalid_event"
        assert "version" in info.value.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("version", MAX_VERSION + 1),
        ("version", 10**30),
        ("position", 2**31),
        ("position", -(2**31) - 1),
    ],
)
def test_json_numbers_beyond_the_wire_types_are_rejected_before_encoding(
    field: str, value: int
) -> None:
    """Regression: JSON input (``streamer publish``, the intake API) took any integer, and
    encoding it crashed with OverflowError or ValueError instead of rejecting the item."""
    data = (
        record(version=value)
        if field == "version"
        else record(images=[image("a.jpg", position=value)])
    )
    verdict = both(data)
    assert verdict[:2] == ("invalid", "invalid_event")
    assert field in verdict[2]
    line = json.dumps({"type": "media", **data, "occurred_at": NOW.isoformat()})
    ack = parse_jsonl([line], clock=VersionClock()).acknowledgment()
    assert ack["request_items"][0]["status"] == "rejected"
    assert ack["request_items"][0]["reason"] == "invalid_event"


def test_the_largest_values_the_wire_takes_encode() -> None:
    codec = Codec()
    event = parse_event(
        MEDIA, record(version=MAX_VERSION, images=[image("a.jpg", position=2**31 - 1)])
    )
    assert codec.decode_event(codec.encode(event, topic="t")) == event


def test_occurred_at_in_year_9999_is_an_event_and_folds() -> None:
    codec = Codec()
    late = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
    value = codec.encode_record(
        record(occurred_at=late, images=[image("a.jpg")]), type_name=MEDIA, topic="t"
    )
    event = codec.decode_lean(value)
    assert event.occurred_at == late
    objects = {"/a.jpg": ObjectInfo("e", 1)}
    result = fold(SkuState("SKU-1"), [event], objects, FoldRules())
    assert result.results[0].outcome is EventOutcome.WRITTEN


def test_a_timestamp_beyond_year_9999_is_malformed_avro() -> None:
    codec = Codec()
    value = codec.encode_record(record(), type_name=MEDIA, topic="t")
    millis = int(NOW.timestamp() * 1000)
    # occurred_at is the record's fourth field: replace its zig-zag varint by a far larger one
    encoded_now, huge = _zigzag(millis), _zigzag(2**62)
    at = value.index(encoded_now)
    with pytest.raises(DecodeError) as info:
        codec.decode_lean(value[:at] + huge + value[at + len(encoded_now) :])
    assert info.value.reason == "malformed_avro"


def _zigzag(n: int) -> bytes:
    z, out = (n << 1) ^ (n >> 63), bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


# -- images: duplicate paths, more than the limit ----------------------------------------------


def test_a_path_listed_twice_keeps_every_role_it_claimed_last_and_counts_once() -> None:
    """Regression: the second listing of a path replaced the first, roles included, so a role
    the first listing claimed (and nobody claimed after it) was owned by no image at all; and
    the path was counted as added twice."""
    event = lean_event(
        MEDIA,
        record(
            images=[
                image("/a.jpg", ["base", "small_image"], label="first"),
                image("/b.jpg", ["small_image"]),
                image("a.jpg", ["thumbnail"], label="second"),
            ]
        ),
    )
    objects = {"/a.jpg": ObjectInfo("ea", 1), "/b.jpg": ObjectInfo("eb", 1)}
    result = fold(SkuState("SKU-1"), [event], objects, FoldRules())
    a, b = result.state.images["/a.jpg"], result.state.images["/b.jpg"]
    assert a.roles == ("image", "thumbnail") and a.label == "second"
    assert b.roles == ("small_image",)  # its claim came after /a.jpg's
    assert result.image_counts == {"added": 2}
    again = fold(
        result.state,
        [lean_event(MEDIA, record(version=6, images=event_images(event)))],
        objects,
        FoldRules(),
    )
    assert again.results[0].outcome is EventOutcome.NOOP  # fmt: skip
    assert again.image_counts == {"unchanged": 2}


def event_images(event: Any) -> list[dict[str, Any]]:
    return [image(i.file_path, list(i.roles), label=i.label) for i in event.images]


def test_eleven_images_with_a_limit_of_ten_keep_the_first_ten_and_count_the_eleventh() -> None:
    images = [image(f"/{i:02}.jpg", position=i) for i in range(11)]
    event = lean_event(MEDIA, record(images=images))
    objects = {i["file_path"]: ObjectInfo("e", 1) for i in images}
    result = fold(SkuState("SKU-1"), [event], objects, FoldRules(image_limit=10))
    assert sorted(result.state.images) == [f"/{i:02}.jpg" for i in range(10)]
    assert result.image_counts == {"added": 10, "dropped_limit": 1}
    assert result.results[0].outcome is EventOutcome.WRITTEN


def test_one_image_over_the_per_event_limit_is_too_many_images() -> None:
    images = [image(f"/{i}.jpg") for i in range(MAX_IMAGES_PER_EVENT + 1)]
    verdict = both(record(images=images))
    assert verdict[:2] == ("invalid", "too_many_images")
    assert f"{MAX_IMAGES_PER_EVENT + 1} images" in verdict[2]
    assert both(record(images=images[:-1]))[0] == "event"


# -- streamer publish: lines that are not JSON -------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("not json at all", "not valid JSON"),
        ("{oops", "not valid JSON"),
        ('"a string"', "expected a JSON object, got str"),
        ("[1, 2]", "expected a JSON object, got list"),
        ("null", "expected a JSON object, got NoneType"),
        ("\x00\x01binary", "not valid JSON"),
    ],
)
def test_a_line_that_is_not_a_json_object_is_rejected_with_its_line_number(
    line: str, expected: str
) -> None:
    good = json.dumps({"type": "media", "sku": "A", "images": [{"file_path": "a.jpg"}]})
    out = parse_jsonl([good, line], clock=VersionClock())
    assert [a.status for a in out.acks] == ["accepted", "rejected"]
    assert out.acks[1].reason == "malformed_json"
    assert out.acks[1].error_message is not None
    assert out.acks[1].error_message.startswith("line 2:") and expected in out.acks[1].error_message


def test_publish_of_a_file_without_one_json_line_exits_1_naming_each_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing valid, so nothing is published (no broker needed): the acknowledgment says why."""
    monkeypatch.setenv("STREAMER_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("hello\n\n<xml/>\n")
    result = CliRunner().invoke(app, ["publish", str(bad), "--json"])
    assert result.exit_code == 1, result.output
    ack = json.loads(result.stdout)
    assert [(i["id"], i["reason"]) for i in ack["request_items"]] == [
        (1, "malformed_json"),
        (3, "malformed_json"),
    ]
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_bulk_payload_that_is_not_json_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bulk.json"
    bad.write_text('{"request": {"items": [')
    result = CliRunner().invoke(app, ["publish", str(bad), "--format", "bulk"])
    assert result.exit_code == 2
    assert "Expecting" in result.output
    assert isinstance(result.exception, SystemExit)


def test_bulk_items_with_bad_numbers_are_rejected_one_by_one() -> None:
    out = parse_bulk(
        {
            "request": {
                "items": [
                    {"sku": "A", "version": MAX_VERSION + 1, "images": [{"file_path": "a.jpg"}]},
                    {"sku": "B", "images": [{"file_path": "b.jpg", "position": 2**40}]},
                    {"sku": "C", "images": [{"file_path": "c.jpg"}]},
                ]
            }
        },
        clock=VersionClock(),
    )
    assert [(a.status, a.reason) for a in out.acks] == [
        ("rejected", "invalid_event"),
        ("rejected", "invalid_event"),
        ("accepted", None),
    ]


# -- configuration: half of a key pair -------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "values", "variable"),
    [
        (
            S3Settings,
            {"s3_secret_access_key": "s3sk-half-pair-91"},
            "STREAMER_S3_SECRET_ACCESS_KEY",
        ),
        (S3Settings, {"s3_access_key_id": "AKIAHALF"}, "STREAMER_S3_SECRET_ACCESS_KEY"),
        (
            ReplicaSettings,
            {"replica_secret_access_key": "replsk-half-pair-91"},
            "STREAMER_REPLICA_SECRET_ACCESS_KEY",
        ),
    ],
)
def test_half_of_a_key_pair_is_a_configuration_error_that_hides_the_secret(
    section: Any, values: dict[str, str], variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a secret key without its key id (or the reverse) loaded fine and failed
    later, inside botocore, as a PartialCredentialsError traceback."""
    for name in list(os.environ):
        if name.startswith("STREAMER_"):
            monkeypatch.delenv(name)
    with pytest.raises(ConfigError) as info:
        load_section(section, None, values)
    assert variable in info.value.message and "or leave both unset" in info.value.message
    assert "half-pair" not in info.value.message
    both = {"s3_access_key_id": "AKIA", "s3_secret_access_key": "s"}
    assert load_section(S3Settings, None, both).s3_access_key_id == "AKIA"
    assert load_section(S3Settings, None, {}).s3_secret_access_key is None


@pytest.mark.parametrize(
    ("variable", "section"),
    [("STREAMER_WEBHOOK_HEADERS", ForwardSettings), ("STREAMER_KAFKA", KafkaSettings)],
)
def test_a_dict_setting_that_is_not_json_is_a_configuration_error_without_its_value(
    variable: str, section: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: pydantic-settings' SettingsError escaped as a traceback."""
    monkeypatch.setenv(variable, "{not json: bearer-tok-93a1")
    with pytest.raises(ConfigError) as info:
        load_section(section, None, {})
    assert "not valid JSON" in info.value.message
    assert variable.removeprefix("STREAMER_").lower() in info.value.message
    assert "bearer-tok-93a1" not in info.value.message


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("AUTHORIZATION", "Bearer tok-83kd\r\nX-Evil: y"),
        ("X_KEY", "tok-83kd\x00"),
        ("BAD NAME", "v"),
    ],
)
def test_a_static_header_that_http_cannot_send_is_refused_at_start_without_its_value(
    header: str, value: str
) -> None:
    """Regression: a header value with a line break loaded fine; the first request then failed
    in h11, whose error quotes the value, and ``forward test-connection`` printed the token."""
    with pytest.raises(ConfigError) as info:
        load_section(ForwardSettings, None, {"webhook_headers": {header: value}})
    assert "STREAMER_WEBHOOK_HEADERS" in info.value.message
    assert "tok-83kd" not in info.value.message


def test_the_webhook_client_redacts_a_secret_also_as_a_repr_quotes_it() -> None:
    secret = "whsec_" + base64.b64encode(b"redaction-test-key-0001").decode()
    settings = ForwardSettings(
        webhook_url="http://127.0.0.1:1/x", webhook_headers={"AUTHORIZATION": "Bearer tok-83kd-é"}
    )
    client = WebhookClient(settings, SigningKeys.from_setting(secret))
    token = "Bearer tok-83kd-é"
    for text in (token, repr(token), repr(token.encode())):
        assert "tok-83kd" not in client._redacted(f"Illegal header value {text}")
