"""``streamer dlq list | show | replay`` against the real broker and PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, Message
from typer.testing import CliRunner

from streamer.cli import app
from streamer.contract.codec import Codec
from streamer.contract.errors import DecodeError, ImageInvalid
from streamer.runtime.deadletters import DeadLetter
from streamer.runtime.publisher import Publisher
from streamer.settings import Settings
from tests.conftest import run_sync
from tests.integration.support import (
    create_topics,
    fetch,
    media,
    prepare,
    read_topic,
    settings_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.smoke]


def dead_letter(
    settings: Settings, topic: str, offset: int, key: bytes, value: bytes, error: Exception
) -> DeadLetter:
    original = Message(
        topic=topic,
        partition=0,
        offset=offset,
        key=key,
        value=value,
        headers=[("traceparent", f"00-{offset:032x}-01".encode())],
        timestamp=(TIMESTAMP_CREATE_TIME, 1_700_000_000_000 + offset),
    )
    return DeadLetter.from_error(
        original,
        error,
        group_id=settings.gallery.group_id,
        job="gallery",
        details={"sku": key.decode()},
    )


def seed(settings: Settings) -> list[DeadLetter]:
    """Three dead letters: two missing objects on the media topic, one undecodable product."""
    codec = Codec.for_registry(settings.kafka.schema_registry_url)
    missing = ImageInvalid("object /x.jpg does not exist", reason="object_missing")
    letters = [
        dead_letter(
            settings,
            settings.topics.media_topic,
            offset,
            sku.encode(),
            codec.encode(
                media(sku, 10, [{"file_path": "/x.jpg"}]), topic=settings.topics.media_topic
            ),
            missing,
        )
        for offset, sku in ((5, "SKU-A"), (6, "SKU-B"))
    ]
    garbage = b"\x07not avro at all"
    letters.append(
        dead_letter(
            settings,
            settings.topics.product_topic,
            7,
            b"SKU-C",
            garbage,
            DecodeError("unknown framing", reason="unknown_framing"),
        )
    )
    with Publisher(settings.kafka) as publisher:
        for letter in letters:
            publisher.produce(
                settings.runtime.dlq_topic,
                letter.value,
                key=letter.key,
                headers=letter.kafka_headers(),
            )
        publisher.flush()
    return letters


def cli(settings: Settings, *args: str) -> Any:
    result = CliRunner().invoke(app, ["dlq", *args, "--json"], env=settings_env(settings))
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


@pytest.fixture
def seeded(make_settings: Callable[..., Settings]) -> tuple[Settings, list[DeadLetter]]:
    settings = make_settings(topic_partitions=2)
    prepare(settings)
    return settings, seed(settings)


def test_list_counts_by_reason_and_topic(seeded: tuple[Settings, list[DeadLetter]]) -> None:
    settings, _letters = seeded
    summary = cli(settings, "list")
    assert summary["total"] == 3
    assert summary["by_reason"] == {"object_missing": 2, "unknown_framing": 1}
    assert summary["by_topic"] == {settings.topics.media_topic: 2, settings.topics.product_topic: 1}
    assert summary["oldest"] is not None and summary["newest"] is not None
    assert summary["oldest"] <= summary["newest"]


def test_show_filters_and_decodes_or_shows_raw_bytes(
    seeded: tuple[Settings, list[DeadLetter]],
) -> None:
    settings, _letters = seeded
    shown = cli(settings, "show", "--reason", "object_missing")
    assert sorted(item["sku"] for item in shown) == ["SKU-A", "SKU-B"]
    for item in shown:
        assert item["reason"] == "object_missing"
        assert item["exception_class"] == "streamer.contract.errors.ImageInvalid"
        assert item["original"].startswith(f"{settings.topics.media_topic}[0]@")
        assert item["event"]["sku"] == item["sku"]
        assert item["event"]["images"][0]["file_path"] == "/x.jpg"

    assert [item["sku"] for item in cli(settings, "show", "--sku", "SKU-B")] == ["SKU-B"]
    assert len(cli(settings, "show", "--topic", settings.topics.product_topic)) == 1
    assert len(cli(settings, "show", "--limit", "1")) == 1

    (bad,) = cli(settings, "show", "--reason", "unknown_framing")
    assert "unknown_framing" in bad["event"]["decode_error"]
    assert bad["event"]["value_hex"] == b"\x07not avro at all".hex()


def test_replay_dry_run_then_once_to_the_original_topic(
    seeded: tuple[Settings, list[DeadLetter]],
) -> None:
    settings, letters = seeded

    dry = cli(settings, "replay", "--reason", "object_missing", "--dry-run")
    assert (dry["matched"], dry["replayed"], len(dry["would_replay"])) == (2, 0, 2)
    assert read_topic(settings, settings.topics.media_topic, idle_s=0.5) == []
    assert run_sync(fetch(settings, "SELECT * FROM dead_letter_replays")) == []

    replayed_from_ms = int(time.time() * 1000)
    done = cli(settings, "replay", "--reason", "object_missing")
    assert (done["matched"], done["replayed"], done["already_replayed"]) == (2, 2, 0)
    back = read_topic(settings, settings.topics.media_topic, idle_s=0.5)
    expected = {letter.key: letter for letter in letters[:2]}
    assert sorted(m.key() for m in back) == sorted(expected)
    for msg in back:
        letter = expected[msg.key()]
        assert msg.value() == letter.value
        headers = dict(msg.headers() or [])
        assert headers["traceparent"] == dict(letter.headers)["traceparent"]
        assert headers["streamer.replay.attempts"] == b"1"
        assert headers["streamer.replay.first_failure"] == str(letter.first_failure_ms).encode()
        assert headers["streamer.replay.from"].startswith(b"dlq:")
        assert not any(k.startswith("streamer.error.") for k in headers)
        # stamped now, the original's timestamp (November 2023) in a header: stamped with
        # it, the replay would be past the topic's retention at once
        assert headers["streamer.replay.timestamp"] == str(letter.timestamp_ms).encode()
        kind, stamped = msg.timestamp()
        assert kind == TIMESTAMP_CREATE_TIME and stamped >= replayed_from_ms
    assert read_topic(settings, settings.topics.product_topic, idle_s=0.5) == []
    rows = run_sync(fetch(settings, "SELECT target_topic FROM dead_letter_replays"))
    assert [r["target_topic"] for r in rows] == [settings.topics.media_topic] * 2

    again = cli(settings, "replay", "--reason", "object_missing")
    assert (again["matched"], again["replayed"], again["already_replayed"]) == (2, 0, 2)
    assert len(read_topic(settings, settings.topics.media_topic, idle_s=0.5)) == 2


def test_replay_without_the_table_says_how_to_fix_it(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(topic_partitions=1)
    create_topics(settings)  # no migrations
    seed(settings)
    result = CliRunner().invoke(
        app, ["dlq", "replay", "--sku", "SKU-C"], env=settings_env(settings)
    )
    assert result.exit_code == 1
    assert "streamer db migrate" in result.output
    assert read_topic(settings, settings.topics.product_topic, idle_s=0.5) == []


def test_an_empty_dead_letter_topic_answers_quickly(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(topic_partitions=2)
    create_topics(settings)
    started = time.monotonic()
    summary = cli(settings, "list")
    assert summary["total"] == 0 and summary["by_reason"] == {}
    assert time.monotonic() - started < 5
    assert cli(settings, "replay", "--reason", "object_missing") == {
        "dry_run": False,
        "matched": 0,
        "replayed": 0,
        "already_replayed": 0,
        "would_replay": [],
    }
