"""Bad input that needs the broker or the API: 1 MB of headers, a 100 KB key, a bulk of 100,000
items. Each ends with a clear reason (a dead letter, a 4xx naming the limit) and the worker
goes on with the good events behind it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from tests.integration.api_support import api_server, seed_payload
from tests.integration.support import (
    Sender,
    dead_letters,
    fetch,
    media,
    prepare,
    put_image,
    read_topic,
    replay,
    run_until_drained,
)

pytestmark = pytest.mark.integration

MB = 1024 * 1024


async def test_a_megabyte_of_headers_and_a_100_kb_key_are_dead_lettered_with_their_reason(
    make_settings, s3_client
) -> None:
    settings = make_settings(topic_partitions=1)
    prepare(settings, input_max_message_bytes=16 * 1024 * 1024)
    put_image(s3_client, settings, "/big/a.jpg", b"fine")
    sender = Sender(settings)
    codec, topic = sender.codec, settings.topics.media_topic
    heavy = [("trace", b"h" * (MB // 2)), ("baggage", b"b" * (MB // 2))]
    sender.send([media("BEFORE", 1, [{"file_path": "/big/a.jpg"}])])
    # undecodable, carrying 1 MB of headers
    sender.raw(topic, b"HDR-BAD", b"not avro", headers=heavy)
    # valid, carrying 1 MB of headers: applied, headers and all
    ok = media("HDR-OK", 1, [{"file_path": "/big/a.jpg"}])
    sender.raw(topic, b"HDR-OK", codec.encode(ok, topic=topic), headers=heavy)
    # a valid event under a 100 KB key that is not its SKU
    keyed = media("KEYED", 1, [{"file_path": "/big/a.jpg"}])
    sender.raw(topic, b"K" * 100 * 1024, codec.encode(keyed, topic=topic))
    sender.flush()
    sender.send([media("AFTER", 1, [{"file_path": "/big/a.jpg"}])])

    await run_until_drained(settings, sender.ends)

    letters = {letter.offset: letter for letter in dead_letters(settings)}
    assert {o: letter.reason for o, letter in letters.items()} == {
        1: "unknown_framing",
        3: "key_mismatch",
    }
    bad = letters[1]
    assert bad.value == b"not avro" and bad.exception_class.startswith("streamer.")
    assert "unknown framing" in bad.message
    # the headers did not fit the dead-letter topic: left out, named with their sizes
    assert bad.original_headers == []
    assert dict(bad.details)["headers.dropped"] == f"trace={MB // 2},baggage={MB // 2}"
    keyed_letter = letters[3]
    assert (
        keyed_letter.detail("sku") == "KEYED" and "is not the event's SKU" in keyed_letter.message
    )
    assert len(keyed_letter.message) < 1000  # the key is quoted cut short, not in full
    stored = {r["sku"] for r in await fetch(settings, "SELECT DISTINCT sku FROM gallery_images")}
    assert stored == {"BEFORE", "HDR-OK", "AFTER"}


async def test_a_week_old_event_is_dead_lettered_and_replayed_where_old_timestamps_are_refused(
    make_settings,
) -> None:
    """Dead letters and replays are stamped when they are sent, the original's timestamp kept
    in a header. Stamped with the original's, a week-old event's dead letter is deleted by
    the next retention check of a 7-day topic (Kafka 3.6.2 did so 30 s after start, under
    the dead-letter tests of CI's smoke run), and a broker that bounds timestamps refuses it:
    the worker then retried that batch for ever."""
    settings = make_settings(topic_partitions=1)
    within_an_hour = {"message.timestamp.before.max.ms": "3600000"}
    prepare(settings, dlq_config=within_an_hour)
    week_ago = int(time.time() * 1000) - 8 * 24 * 3600 * 1000
    sender = Sender(settings)
    sender.raw(settings.topics.media_topic, b"OLD", b"not avro", timestamp_ms=week_ago)
    sender.flush()

    await run_until_drained(settings, sender.ends, timeout_s=60)

    (letter,) = dead_letters(settings)
    assert (letter.reason, letter.timestamp_ms) == ("unknown_framing", week_ago)

    admin = AdminClient(settings.kafka.client_config())
    bounded = ConfigResource(
        ConfigResource.Type.TOPIC,
        settings.topics.media_topic,
        incremental_configs=[
            ConfigEntry(
                "message.timestamp.before.max.ms",
                "3600000",
                incremental_operation=AlterConfigOpType.SET,
            )
        ],
    )
    for future in admin.incremental_alter_configs([bounded]).values():
        future.result(timeout=30)
    sent_from = int(time.time() * 1000)
    result = await replay(settings, reason="unknown_framing")
    assert result.replayed == 1
    back = read_topic(settings, settings.topics.media_topic, idle_s=0.5)[-1]
    assert back.timestamp()[1] >= sent_from
    assert dict(back.headers() or [])["streamer.replay.timestamp"] == str(week_ago).encode()


async def test_the_intake_refuses_100_000_items_and_numbers_beyond_the_wire_types(
    make_settings, tmp_path: Path
) -> None:
    settings = make_settings()
    prepare(settings)
    payload = seed_payload("huge", [f"SKU-{i}" for i in range(100_000)])
    with api_server(settings, tmp_path) as server:
        async with server.client() as http:
            refused = await http.post("/v1/galleries/bulk", json=payload)
            assert refused.status_code == 422, refused.text
            assert "100000 items, over the limit of 20000" in refused.json()["detail"]
            # numbers beyond the wire types: rejected by item (they crashed the encoder)
            lines = "\n".join(
                json.dumps({"type": "media", "sku": sku, **fields})
                for sku, fields in (
                    ("V-1", {"version": 2**64, "images": [{"file_path": "a.jpg"}]}),
                    ("P-1", {"images": [{"file_path": "a.jpg", "position": 2**40}]}),
                )
            )
            events = await http.post("/v1/events", content=lines)
            assert events.status_code == 202, events.text  # well formed, nothing accepted
            assert events.json()["bulk_uuid"] is None
            assert [(i["status"], i["reason"]) for i in events.json()["request_items"]] == [
                ("rejected", "invalid_event"),
                ("rejected", "invalid_event"),
            ]
            alive = await http.post("/v1/galleries/bulk", json=seed_payload("small", ["S-1"]))
            assert alive.status_code in (200, 202), alive.text
    assert {m.key() for m in read_topic(settings, settings.topics.media_topic)} == {b"S-1"}
