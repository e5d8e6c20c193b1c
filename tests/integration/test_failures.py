"""Bad input is dead-lettered with its reason and loses nothing; data errors stay with their SKU;
a dead-lettered missing image completes once uploaded and replayed."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest

from streamer.contract.codec import SINGLE_OBJECT_MAGIC, event_record
from tests.integration.support import (
    Sender,
    dead_letters,
    fetch,
    media,
    prepare,
    put_image,
    replay,
    run_until_drained,
)
from tests.samples import unknown_schema_message

pytestmark = pytest.mark.integration


async def test_every_bad_input_lands_in_the_dlq_with_its_reason(make_settings, s3_client) -> None:
    settings = make_settings(max_image_bytes=1000, topic_partitions=1)
    prepare(settings, input_max_message_bytes=16 * 1024 * 1024)
    put_image(s3_client, settings, "/ok/1.jpg", b"fine")
    put_image(s3_client, settings, "/ok/big.jpg", b"x" * 2000)
    sender = Sender(settings)
    codec = sender.codec
    topic = settings.topics.media_topic
    good = media("GOOD-1", 1, [{"file_path": "/ok/1.jpg"}])
    valid = codec.encode(media("BAD-KEY", 1, [{"file_path": "/ok/1.jpg"}]), topic=topic)

    def record(**overrides: Any) -> bytes:
        data = event_record(media("X", 1, [{"file_path": "/ok/1.jpg"}]))
        data.update(overrides)
        return codec.encode_record(data, type_name="MediaGalleryChanged", topic=topic)

    reused = str(uuid.uuid4())
    bad: list[tuple[bytes | None, bytes | None, str]] = [
        (b"R", bytes(range(1, 200)), "unknown_framing"),
        (b"T", valid[:30], "malformed_avro"),
        (b"U", unknown_schema_message(), "unknown_schema"),
        (b"C", b"\x00\x00\x00\x30\x39" + valid[10:], "unknown_schema_id"),
        (b"N", None, "null_value"),
        (b"B", SINGLE_OBJECT_MAGIC + valid[2:10] + b"\xff" * (5 * 1024 * 1024), "malformed_avro"),
        (
            b"MANY",
            record(
                sku="MANY",
                images=[
                    {
                        "file_path": f"/m/{i}.jpg",
                        "label": None,
                        "position": None,
                        "disabled": False,
                        "roles": [],
                        "etag": None,
                    }
                    for i in range(10_000)
                ],
            ),
            "too_many_images",
        ),
        (
            b"P",
            codec.encode(media("P", 1, [{"file_path": "../etc/passwd"}]), topic=topic),
            "invalid_file_path",
        ),
        (b"", record(sku=""), "invalid_sku"),
        (b"L" * 10_000, record(sku="L" * 10_000), "invalid_sku"),
        (b"\xff\xfe", valid, "key_mismatch"),
        (
            b"D",
            codec.encode(media("D", 1, [{"file_path": "/ok/1.jpg"}], event_id=reused), topic=topic),
            None,
        ),
        (
            b"D",
            codec.encode(
                media("D", 2, [{"file_path": "/ok/big.jpg", "label": "other"}], event_id=reused),
                topic=topic,
            ),
            "duplicate_event_id",
        ),
        (
            b"M",
            codec.encode(media("M", 1, [{"file_path": "/ok/missing.jpg"}]), topic=topic),
            "object_missing",
        ),
        (
            b"O",
            codec.encode(media("O", 1, [{"file_path": "/ok/big.jpg"}]), topic=topic),
            "object_too_large",
        ),
    ]
    sender.send([good])
    for key, value, _ in bad:
        sender.raw(topic, key, value)
    sender.send([media("GOOD-2", 1, [{"file_path": "/ok/1.jpg"}])])

    await run_until_drained(settings, sender.ends)

    letters = dead_letters(settings)
    expected = Counter(reason for _, _, reason in bad if reason is not None)
    assert Counter(r.reason for r in letters) == expected
    for letter in letters:
        assert letter.topic == topic
        assert letter.group_id == settings.gallery.group_id
        assert letter.exception_class.startswith("streamer.")
        assert letter.message
        assert letter.attempts == 1
        assert letter.first_failure_ms is not None
    by_offset = {r.offset: r for r in letters}
    # the dead letter carries the original bytes, so it can be replayed as it was
    assert by_offset[2].value == valid[:30] and by_offset[2].key == b"T"
    # a 5 MB original does not fit a dead-letter topic: cut to 1 KiB, its size and hash kept
    huge = by_offset[6]
    assert huge.reason == "malformed_avro" and len(huge.value or b"") == 1024
    headers = dict(huge.original_headers)
    assert "streamer.error.value.truncated_from" not in headers  # error headers are parsed apart
    stored = {r["sku"] for r in await fetch(settings, "SELECT DISTINCT sku FROM gallery_images")}
    assert stored == {"GOOD-1", "GOOD-2", "D"}


async def test_a_database_error_of_one_sku_dead_letters_only_that_sku(
    make_settings, s3_client
) -> None:
    settings = make_settings(topic_partitions=1)
    prepare(settings)
    put_image(s3_client, settings, "/db/1.jpg", b"one")
    await fetch(
        settings,
        "ALTER TABLE gallery_images ADD CONSTRAINT no_poison CHECK (label IS DISTINCT FROM 'POISON')",
    )
    sender = Sender(settings)
    sender.send(
        [
            media("DB-1", 1, [{"file_path": "/db/1.jpg", "label": "fine"}]),
            media("DB-2", 1, [{"file_path": "/db/1.jpg", "label": "POISON"}]),
            media("DB-3", 1, [{"file_path": "/db/1.jpg", "label": "fine"}]),
        ]
    )
    worker = await run_until_drained(settings, sender.ends)
    assert worker.stats.batches >= 1
    stored = {r["sku"] for r in await fetch(settings, "SELECT sku FROM gallery_images")}
    assert stored == {"DB-1", "DB-3"}
    letters = dead_letters(settings)
    assert [(r.reason, r.detail("sku")) for r in letters] == [("database_data_error", "DB-2")]
    assert "no_poison" in letters[0].message


async def test_missing_object_dead_letter_replayed_after_upload_completes_the_gallery(
    make_settings, s3_client
) -> None:
    settings = make_settings()
    prepare(settings)
    put_image(s3_client, settings, "/late/a.jpg", b"a")
    sender = Sender(settings)
    sender.send(
        [
            media(
                "LATE-1",
                5,
                [{"file_path": "/late/a.jpg", "roles": ["base"]}, {"file_path": "/late/b.jpg"}],
            )
        ]
    )
    await run_until_drained(settings, sender.ends)
    assert [
        r["file_path"] for r in await fetch(settings, "SELECT file_path FROM gallery_images")
    ] == ["/late/a.jpg"]
    assert [r.reason for r in dead_letters(settings)] == ["object_missing"]

    dry = await replay(settings, reason="object_missing", dry_run=True)
    assert (dry.matched, dry.replayed, len(dry.records)) == (1, 0, 1)

    put_image(s3_client, settings, "/late/b.jpg", b"b")
    result = await replay(settings, reason="object_missing")
    assert result.replayed == 1
    for tp, end in result.end_offsets.items():
        sender.ends[tp] = max(sender.ends.get(tp, 0), end)
    await run_until_drained(settings, sender.ends)
    rows = await fetch(settings, "SELECT file_path, roles FROM gallery_images ORDER BY file_path")
    assert [(r["file_path"], r["roles"]) for r in rows] == [
        ("/late/a.jpg", ["image"]),
        ("/late/b.jpg", []),
    ]

    again = await replay(settings, reason="object_missing")
    assert (again.replayed, again.already_replayed) == (0, 1)
