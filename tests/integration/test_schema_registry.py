"""Confluent framing against a real Schema Registry: Apicurio Registry's Confluent API.

Until these tests, framing was shown only against confluent-kafka's in-memory ``mock://``
registry, which checks no compatibility. Here ``streamer publish`` registers its writer
schemas with a registry that enforces the subject's compatibility level, the real consumer
reads events written with an older schema version and the current one, and a schema the
registry refuses ends ``streamer publish`` with an error naming the subject, before anything
is published.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import parse_schema
from fastavro.schema import to_parsing_canonical_form
from typer.testing import CliRunner

from streamer.cli import app
from streamer.contract.codec import Codec, event_record
from streamer.contract.errors import SchemaRejected
from streamer.contract.schemas import schema_dir
from streamer.gallery.worker import gallery_runner
from tests.integration.api_support import api_server, seed_payload
from tests.integration.support import (
    Sender,
    fetch,
    media,
    prepare,
    processed,
    product,
    put_image,
    read_topic,
    run_until_drained,
    settings_env,
    stored_offsets,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka_only]


def current(name: str) -> dict[str, Any]:
    return json.loads((schema_dir() / f"{name}.avsc").read_text())


def history(name: str) -> dict[str, Any]:
    return json.loads((schema_dir() / "history" / f"{name}.v1.avsc").read_text())


def canonical(schema: dict[str, Any] | str) -> str:
    raw = json.loads(schema) if isinstance(schema, str) else schema
    return to_parsing_canonical_form(parse_schema(raw, _write_hint=False))


def publish_cli(settings, monkeypatch, tmp_path: Path, lines: list[dict[str, Any]]):
    for key, val in settings_env(settings).items():
        if key.startswith("STREAMER_"):
            monkeypatch.setenv(key, val)
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return CliRunner().invoke(app, ["publish", str(path), "--json"], catch_exceptions=False)


def read_all(settings, topic: str, count: int, *, timeout_s: float = 60.0) -> list[Any]:
    """The ``count`` messages of ``topic``: the first read of a new session's broker can stay
    quiet longer than ``read_topic``'s idle second, so read until they are all there."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = read_topic(settings, topic)
        if len(got) >= count or time.monotonic() > deadline:
            assert len(got) == count, f"{topic}: {len(got)} messages, expected {count}"
            return got


def message_count(settings, topic: str) -> int:
    """Messages ever written to ``topic``, from Apache Kafka's watermarks (no quiet to wait
    for: these tests are kafka_only)."""
    consumer = Consumer(settings.kafka.client_config(**{"group.id": "count-only"}))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        total = 0
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def ends_of(messages: list[Any]) -> dict[tuple[str, int], int]:
    ends: dict[tuple[str, int], int] = {}
    for m in messages:
        tp = (m.topic(), m.partition())
        ends[tp] = max(ends.get(tp, 0), m.offset() + 1)
    return ends


async def gallery(settings, sku: str) -> dict[str, dict[str, Any]]:
    rows = await fetch(
        settings,
        "SELECT file_path, label, position, etag FROM gallery_images WHERE sku = $1",
        sku,
    )
    return {r["file_path"]: dict(r) for r in rows}


async def test_publish_registers_the_writer_schemas_and_the_consumer_reads_the_framed_events(
    make_settings, schema_registry, s3_client, monkeypatch, tmp_path: Path
) -> None:
    settings = make_settings(schema_registry_url=schema_registry.url)
    prepare(settings)
    etag = put_image(s3_client, settings, "/reg/a.jpg", b"a")
    result = publish_cli(
        settings,
        monkeypatch,
        tmp_path,
        [
            {"type": "ProductChanged", "sku": "REG-1", "version": 1, "name": "Shirt"},
            {
                "type": "MediaGalleryChanged",
                "sku": "REG-1",
                "version": 1,
                "images": [{"file_path": "/reg/a.jpg", "label": "A", "position": 1}],
            },
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["errors"] is False

    client = SchemaRegistryClient({"url": schema_registry.url})
    messages = []
    for topic, name in (
        (settings.topics.product_topic, "ProductChanged"),
        (settings.topics.media_topic, "MediaGalleryChanged"),
    ):
        got = read_all(settings, topic, 1)
        value = got[0].value()
        assert value[0] == 0  # Confluent framing: magic byte 0, then the schema id
        (schema_id,) = struct.unpack(">I", value[1:5])
        registered = client.get_latest_version(f"{topic}-value")
        assert registered.schema_id == schema_id and registered.version == 1
        assert canonical(client.get_schema(schema_id).schema_str) == canonical(current(name))
        messages.extend(got)

    worker = await run_until_drained(settings, ends_of(messages))
    assert processed(worker)["written"] >= 1
    assert (await gallery(settings, "REG-1"))["/reg/a.jpg"]["etag"] == etag
    # The consumer's own outcome events are framed for the same registry.
    outcomes = read_all(settings, settings.topics.outcome_topic, 1)
    assert all(m.value()[0] == 0 for m in outcomes)
    outcome_subject = client.get_latest_version(f"{settings.topics.outcome_topic}-value")
    assert canonical(outcome_subject.schema.schema_str) == canonical(current("GalleryUpdated"))


async def test_a_backward_compatible_evolution_is_accepted_and_old_and_new_events_are_consumed(
    make_settings, schema_registry, s3_client, monkeypatch, tmp_path: Path
) -> None:
    """Version 1 of the source schemas (schemas/history) is what an older producer registered;
    the subjects are then set to BACKWARD, and ``streamer publish`` registers version 2."""
    settings = make_settings(schema_registry_url=schema_registry.url)
    prepare(settings)
    for path in ("/evo/old.jpg", "/evo/both-1.jpg", "/evo/both-2.jpg", "/evo/new.jpg"):
        put_image(s3_client, settings, path, path.encode())
    client = SchemaRegistryClient({"url": schema_registry.url})
    media_subject = f"{settings.topics.media_topic}-value"
    product_subject = f"{settings.topics.product_topic}-value"

    # An older producer, confluent-kafka's own AvroSerializer, writes with version 1.
    old = Sender(settings)
    for subject, topic, name, records in (
        (
            media_subject,
            settings.topics.media_topic,
            "MediaGalleryChanged",
            [
                _v1_media("OLD-1", 1, "/evo/old.jpg"),
                _v1_media("BOTH-1", 1, "/evo/both-1.jpg"),
            ],
        ),
        (
            product_subject,
            settings.topics.product_topic,
            "ProductChanged",
            [_v1_product("OLD-1", 1, "Old shirt"), _v1_product("BOTH-1", 1, "Old name")],
        ),
    ):
        serializer = AvroSerializer(
            client, json.dumps(history(name)), conf={"auto.register.schemas": True}
        )
        for record in records:
            value = serializer(record, SerializationContext(topic, MessageField.VALUE))
            old.raw(topic, record["sku"].encode(), value)
        assert client.set_compatibility(subject, "BACKWARD")["compatibility"] == "BACKWARD"
        assert client.get_compatibility(subject) == "BACKWARD"
    old.flush()

    result = publish_cli(
        settings,
        monkeypatch,
        tmp_path,
        [
            {
                "type": "MediaGalleryChanged",
                "sku": "BOTH-1",
                "version": 2,
                "request_id": "evo-2",
                "images": [{"file_path": "/evo/both-2.jpg", "label": "v2"}],
                "mode": "REPLACE",
            },
            {"type": "ProductChanged", "sku": "BOTH-1", "version": 2, "name": "New name"},
            {
                "type": "MediaGalleryChanged",
                "sku": "NEW-1",
                "version": 1,
                "images": [{"file_path": "/evo/new.jpg"}],
            },
        ],
    )
    assert result.exit_code == 0, result.output
    for subject, name in (
        (media_subject, "MediaGalleryChanged"),
        (product_subject, "ProductChanged"),
    ):
        assert client.get_versions(subject) == [1, 2]
        assert canonical(client.get_version(subject, 1).schema.schema_str) == canonical(
            history(name)
        )
        assert canonical(client.get_version(subject, 2).schema.schema_str) == canonical(
            current(name)
        )

    messages = read_all(settings, settings.topics.media_topic, 4) + read_all(
        settings, settings.topics.product_topic, 3
    )
    ids = {struct.unpack(">I", m.value()[1:5])[0] for m in messages}
    assert len(ids) == 4  # two versions of two schemas
    await run_until_drained(settings, ends_of(messages))
    assert set(await gallery(settings, "OLD-1")) == {"/evo/old.jpg"}
    assert set(await gallery(settings, "BOTH-1")) == {"/evo/both-2.jpg"}
    assert (await gallery(settings, "BOTH-1"))["/evo/both-2.jpg"]["label"] == "v2"
    assert set(await gallery(settings, "NEW-1")) == {"/evo/new.jpg"}
    names = await fetch(
        settings, "SELECT sku, name FROM products WHERE sku = ANY($1)", ["OLD-1", "BOTH-1"]
    )
    assert {r["sku"]: r["name"] for r in names} == {"BOTH-1": "New name", "OLD-1": "Old shirt"}

    # The events of version 1 decode into the current model, defaults filled in.
    codec = Codec.for_registry(schema_registry.url)
    olds = [m for m in messages if m.key() == b"OLD-1" and m.topic().endswith("media.v1")]
    decoded = codec.decode_event(olds[0].value())
    assert decoded.request_id is None and decoded.images[0].etag is None


async def test_an_incompatible_schema_is_refused_and_publish_sends_nothing(
    make_settings, schema_registry, monkeypatch, tmp_path: Path
) -> None:
    """Another producer registered a MediaGalleryChanged whose ``version`` is a string; under
    BACKWARD, ours (a long) cannot read its events, and the registry says so."""
    settings = make_settings(schema_registry_url=schema_registry.url)
    prepare(settings)
    media_subject = f"{settings.topics.media_topic}-value"
    client = _register_incompatible_media(schema_registry.url, media_subject)

    result = publish_cli(
        settings,
        monkeypatch,
        tmp_path,
        [
            {"type": "ProductChanged", "sku": "INC-1", "version": 1, "name": "Shirt"},
            {"type": "MediaGalleryChanged", "sku": "INC-1", "images": [{"file_path": "/i.jpg"}]},
        ],
    )
    assert result.exit_code == 1
    error = " ".join(result.output.split())
    assert (
        f"error: the schema registry refused the MediaGalleryChanged schema for subject "
        f"{media_subject}: it is incompatible with the versions registered there under BACKWARD "
        "compatibility (Incompatible artifact" in error
    )
    assert "/fields/2/type" in error  # the registry's own account of what differs
    assert error.endswith("; nothing was published")
    assert "Exception" not in error and "Traceback" not in error
    # Nothing reached either topic, and the registry kept only the other producer's schema.
    assert message_count(settings, settings.topics.product_topic) == 0
    assert message_count(settings, settings.topics.media_topic) == 0
    assert client.get_versions(media_subject) == [1]


async def test_a_worker_whose_outcome_schema_is_refused_stops_with_the_reason_and_commits_nothing(
    make_settings, schema_registry, s3_client
) -> None:
    """The consumer registers GalleryUpdated for its outcome topic at its first outcome. A
    registry that refuses it will refuse it on every retry: the worker ends with the reason
    instead of pausing for ever, and its transaction (rows, offsets) is rolled back."""
    settings = make_settings(schema_registry_url=schema_registry.url)
    prepare(settings)
    put_image(s3_client, settings, "/w/a.jpg", b"w")
    outcome_subject = f"{settings.topics.outcome_topic}-value"
    _register_incompatible(schema_registry.url, outcome_subject, "GalleryUpdated", "sku", "int")
    sender = Sender(settings)
    sender.send([media("W-1", 1, [{"file_path": "/w/a.jpg"}])])

    worker = gallery_runner(settings, install_signal_handlers=False)
    with pytest.raises(SchemaRejected) as info:
        await asyncio.wait_for(worker.run(asyncio.Event()), timeout=120)
    assert f"GalleryUpdated schema for subject {outcome_subject}" in info.value.message
    assert "under BACKWARD compatibility" in info.value.message
    assert await gallery(settings, "W-1") == {}
    assert set((await stored_offsets(settings)).values()) <= {-1}  # none consumed
    assert message_count(settings, settings.topics.outcome_topic) == 0


async def test_the_intake_answers_a_refused_schema_with_its_reason_and_publishes_nothing(
    make_settings, schema_registry, tmp_path: Path
) -> None:
    """Before, the refusal was a 'registry unavailable' 503 with Retry-After: clients retried
    a schema the registry will never take."""
    settings = make_settings(schema_registry_url=schema_registry.url)
    prepare(settings)
    media_subject = f"{settings.topics.media_topic}-value"
    _register_incompatible_media(schema_registry.url, media_subject)
    with api_server(settings, tmp_path) as server:
        async with server.client() as http:
            reply = await http.post(
                "/v1/galleries/bulk", json=seed_payload("reg-1", ["API-1"], "api/a.jpg")
            )
    assert reply.status_code == 500 and "retry-after" not in reply.headers
    body = reply.json()
    assert body["reason"] == "schema_rejected"
    assert f"MediaGalleryChanged schema for subject {media_subject}" in body["detail"]
    assert "under BACKWARD compatibility" in body["detail"]
    assert message_count(settings, settings.topics.media_topic) == 0


def test_registry_credentials_in_the_url_are_sent_but_never_logged(
    make_settings, schema_registry, monkeypatch, tmp_path: Path
) -> None:
    """``https://key:secret@host`` is how confluent-kafka's client takes basic auth; its HTTP
    library logs each request's URL at INFO, which printed the secret on every registration."""
    secret = "srpw-Hk27Lq94Zt"
    url = schema_registry.url.replace("http://", f"http://audit:{secret}@")
    settings = make_settings(schema_registry_url=url, log_level="DEBUG")
    prepare(settings)
    result = publish_cli(
        settings,
        monkeypatch,
        tmp_path,
        [{"type": "ProductChanged", "sku": "SEC-1", "version": 1, "name": "Shirt"}],
    )
    assert result.exit_code == 0, result.output
    assert "HTTP Request: POST" in result.output  # the request log is there, without it
    assert secret not in result.output
    codec = Codec.for_registry(url)
    (message,) = read_all(settings, settings.topics.product_topic, 1)
    assert codec.decode_event(message.value()).sku == "SEC-1"
    assert codec.registry._rest_client.auth == ("audit", secret)  # still sent as basic auth


def test_the_registry_answers_confluents_api_on_loopback_only(schema_registry) -> None:
    """What the starter promises: Apicurio's Confluent API on 127.0.0.1, in-memory storage."""
    assert schema_registry.url.startswith("http://127.0.0.1:")
    answer = httpx.get(f"{schema_registry.url}/config", timeout=5)
    assert answer.status_code == 200 and "compatibilityLevel" in answer.json()
    assert schema_registry.ready_s is not None and schema_registry.alive


def _register_incompatible_media(url: str, subject: str) -> SchemaRegistryClient:
    """Another producer's MediaGalleryChanged whose ``version`` is a string, under BACKWARD."""
    return _register_incompatible(url, subject, "MediaGalleryChanged", "version", "string")


def _register_incompatible(
    url: str, subject: str, name: str, field_name: str, field_type: str
) -> SchemaRegistryClient:
    """Another producer's ``name`` with one field of another type, the subject under BACKWARD:
    ours cannot read its events, so the registry refuses ours."""
    client = SchemaRegistryClient({"url": url})
    theirs = current(name)
    for field in theirs["fields"]:
        if field["name"] == field_name:
            field["type"] = field_type
    client.register_schema(subject, Schema(json.dumps(theirs), "AVRO"))
    client.set_compatibility(subject, "BACKWARD")
    return client


def _v1_media(sku: str, version: int, path: str) -> dict[str, Any]:
    record = event_record(media(sku, version, [{"file_path": path, "label": "old"}]))
    record.pop("request_id")
    for image in record["images"]:
        image.pop("etag")
    return record


def _v1_product(sku: str, version: int, name: str) -> dict[str, Any]:
    return {
        k: v
        for k, v in event_record(product(sku, version, name=name)).items()
        if k in {f["name"] for f in history("ProductChanged")["fields"]}
    }
