"""Dead-letter headers: built from a failed message, read back, carried through a replay."""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, Message

from streamer.contract.errors import ImageInvalid
from streamer.runtime.deadletters import (
    HEADER_PREFIX,
    DeadLetter,
    DeadLetterRecord,
    attempts_from_headers,
)
from streamer.runtime.replay import DeadLetterFilter, replay_headers

pytestmark = pytest.mark.unit

SOURCE = "catalog.media.v1"
DLQ = "catalog.gallery.dlq"


def original(headers: list[tuple[str, bytes]] | None = None, **kw: object) -> Message:
    values: dict[str, object] = {
        "topic": SOURCE,
        "partition": 3,
        "offset": 41,
        "key": b"SKU-1",
        "value": b"\xc3\x01avro-bytes",
        "headers": headers if headers is not None else [("traceparent", b"00-abc-01")],
        "timestamp": (TIMESTAMP_CREATE_TIME, 1_700_000_000_123),
    }
    values.update(kw)
    return Message(**values)  # type: ignore[arg-type]


def on_dlq(letter: DeadLetter, offset: int = 9) -> Message:
    """What the dead-letter topic holds for ``letter``."""
    return Message(
        topic=DLQ,
        partition=1,
        offset=offset,
        key=letter.key,
        value=letter.value,
        headers=letter.kafka_headers(),
    )


def replayed(record: DeadLetterRecord) -> Message:
    """What ``streamer dlq replay`` puts back on the original topic for ``record``."""
    return original(
        headers=replay_headers(record),
        offset=500,
        key=record.key,
        value=record.value,
        timestamp=(TIMESTAMP_CREATE_TIME, int(time.time() * 1000)),
    )


def letter_for(msg: Message, **kw: object) -> DeadLetter:
    error = ImageInvalid("object /a.jpg is missing", reason="object_missing")
    return DeadLetter.from_error(msg, error, group_id="streamer", job="gallery", **kw)  # type: ignore[arg-type]


def test_from_error_keeps_the_original_message_and_names_the_error() -> None:
    before = int(time.time() * 1000)
    letter = letter_for(original(), details={"sku": "SKU-1"})
    after = int(time.time() * 1000)
    assert (letter.key, letter.value) == (b"SKU-1", b"\xc3\x01avro-bytes")
    assert letter.headers == [("traceparent", b"00-abc-01")]
    assert (letter.topic, letter.partition, letter.offset) == (SOURCE, 3, 41)
    assert letter.timestamp_ms == 1_700_000_000_123
    assert (letter.reason, letter.message) == ("object_missing", "object /a.jpg is missing")
    assert letter.exception_class == "streamer.contract.errors.ImageInvalid"
    assert letter.attempts == 1
    assert letter.first_failure_ms is not None and before <= letter.first_failure_ms <= after
    assert letter.last_failure_ms == letter.first_failure_ms


def test_unexpected_errors_get_a_reason_too() -> None:
    letter = DeadLetter.from_error(original(), ZeroDivisionError("boom"), group_id="g")
    assert letter.reason == "unexpected_error"
    assert letter.exception_class == "builtins.ZeroDivisionError"
    assert letter.message == "boom"


def test_headers_round_trip_through_the_dead_letter_topic() -> None:
    letter = letter_for(original(), details={"sku": "SKU-1"})
    headers = dict(letter.kafka_headers())
    for name in (
        "reason",
        "message",
        "exception.class",
        "topic",
        "partition",
        "offset",
        "timestamp",
        "attempts",
        "group",
        "job",
        "first_failure",
        "last_failure",
        "sku",
    ):
        assert HEADER_PREFIX + name in headers, name
    assert headers[HEADER_PREFIX + "partition"] == b"3"
    assert headers[HEADER_PREFIX + "job"] == b"gallery"
    assert headers["traceparent"] == b"00-abc-01"

    record = DeadLetterRecord.from_message(on_dlq(letter))
    assert (record.job, record.group_id) == ("gallery", "streamer")
    assert (record.dlq_topic, record.dlq_partition, record.dlq_offset) == (DLQ, 1, 9)
    assert (record.key, record.value) == (letter.key, letter.value)
    assert record.original_headers == [("traceparent", b"00-abc-01")]
    assert (record.reason, record.message, record.exception_class) == (
        letter.reason,
        letter.message,
        letter.exception_class,
    )
    assert (record.topic, record.partition, record.offset) == (SOURCE, 3, 41)
    assert record.timestamp_ms == 1_700_000_000_123
    assert (record.attempts, record.group_id, record.detail("sku")) == (1, "streamer", "SKU-1")
    assert (record.first_failure_ms, record.last_failure_ms) == (
        letter.first_failure_ms,
        letter.last_failure_ms,
    )


def test_sku_header_only_when_known_and_missing_timestamp_reads_back_as_none() -> None:
    msg = original(timestamp=(0, 0))
    letter = letter_for(msg)
    assert HEADER_PREFIX + "sku" not in dict(letter.kafka_headers())
    record = DeadLetterRecord.from_message(on_dlq(letter))
    assert record.detail("sku") is None
    assert record.timestamp_ms is None


def test_message_header_is_cut_to_4_kib_without_splitting_a_character() -> None:
    letter = replace(letter_for(original()), message="é" * 5000)  # 2 bytes each
    raw = dict(letter.kafka_headers())[HEADER_PREFIX + "message"]
    assert len(raw) == 4096
    assert raw.decode("utf-8") == "é" * 2048
    odd = replace(letter, message="a" + "é" * 5000)
    raw = dict(odd.kafka_headers())[HEADER_PREFIX + "message"]
    assert len(raw) == 4095
    raw.decode("utf-8")  # strict: no half character at the end


def test_error_headers_of_an_earlier_failure_are_replaced_not_stacked() -> None:
    first = letter_for(original(), details={"sku": "SKU-1"})
    again = DeadLetter.from_error(
        original(headers=first.kafka_headers()), ValueError("x"), group_id="g"
    )
    names = [k for k, _ in again.kafka_headers()]
    assert names.count(HEADER_PREFIX + "reason") == 1
    assert dict(again.kafka_headers())[HEADER_PREFIX + "reason"] == b"unexpected_error"
    assert names[0] == "traceparent"


def test_attempts_and_first_failure_carry_through_a_replay() -> None:
    first = replace(
        letter_for(original(), details={"sku": "SKU-1"}),
        first_failure_ms=1000,
        last_failure_ms=1000,
    )
    record = DeadLetterRecord.from_message(on_dlq(first, offset=9))

    back = replayed(record)
    headers = dict(back.headers() or [])
    assert headers["streamer.replay.from"] == b"dlq:1:9"
    assert headers["traceparent"] == b"00-abc-01"
    assert not any(k.startswith(HEADER_PREFIX) for k in headers)
    assert attempts_from_headers(back.headers()) == (1, 1000)

    previous, _ = attempts_from_headers(back.headers())
    second = letter_for(back, attempts=previous + 1, details={"sku": "SKU-1"})
    assert second.first_failure_ms == 1000, "the first failure is kept across the replay"
    assert headers["streamer.replay.timestamp"] == b"1700000000123"
    assert second.timestamp_ms == 1_700_000_000_123, "the original's timestamp, not the replay's"
    assert second.last_failure_ms is not None and second.last_failure_ms > 1000
    record2 = DeadLetterRecord.from_message(on_dlq(second, offset=10))
    assert (record2.attempts, record2.first_failure_ms) == (2, 1000)
    assert record2.original_headers == [("traceparent", b"00-abc-01")], "no replay headers kept"

    # A second replay does not stack replay headers either.
    third = replayed(record2)
    assert [k for k, _ in third.headers() or []].count("streamer.replay.attempts") == 1
    assert attempts_from_headers(third.headers()) == (2, 1000)


@pytest.mark.parametrize(
    "headers",
    [None, [], [("streamer.replay.attempts", b"x"), ("streamer.replay.first_failure", b"")]],
)
def test_attempts_from_headers_of_a_fresh_or_garbled_message(
    headers: list[tuple[str, bytes]] | None,
) -> None:
    assert attempts_from_headers(headers) == (0, None)


def test_filters_by_reason_key_topic_and_time() -> None:
    letter = replace(letter_for(original(), details={"sku": "SKU-1"}), last_failure_ms=5000)
    record = DeadLetterRecord.from_message(on_dlq(letter))
    assert DeadLetterFilter().matches(record)
    assert DeadLetterFilter(reason="object_missing", key="SKU-1", topic=SOURCE).matches(record)
    assert not DeadLetterFilter(reason="undecodable").matches(record)
    assert not DeadLetterFilter(key="SKU-2").matches(record)
    assert not DeadLetterFilter(topic="catalog.product.v1").matches(record)
    assert DeadLetterFilter(since_ms=5000, until_ms=5000).matches(record)
    assert not DeadLetterFilter(since_ms=5001).matches(record)
    assert not DeadLetterFilter(until_ms=4999).matches(record)
    assert DeadLetterFilter(job="gallery").matches(record)
    assert not DeadLetterFilter(job="forward").matches(record)
    no_detail = DeadLetterRecord.from_message(on_dlq(letter_for(original())))
    assert DeadLetterFilter(key="SKU-1").matches(no_detail), "the message key, whatever the job"


def test_oversized_value_is_cut_with_its_size_and_hash() -> None:
    big = b"x" * 5000
    letter = letter_for(original(value=big)).fitted(2048)
    assert letter.value == big[:1024]
    headers = dict(letter.kafka_headers())
    assert headers[HEADER_PREFIX + "value.truncated_from"] == b"5000"
    assert headers[HEADER_PREFIX + "value.sha256"] == hashlib.sha256(big).hexdigest().encode()
    small = letter_for(original())
    assert small.fitted(2048) is small


def _record_bytes(letter: DeadLetter) -> int:
    return (
        len(letter.key or b"")
        + len(letter.value or b"")
        + sum(len(k) + len(v or b"") for k, v in letter.kafka_headers())
    )


def test_a_megabyte_of_headers_is_left_out_named_with_sizes_and_small_headers_kept() -> None:
    """Regression: only the value was bounded. A message carrying 1 MB of headers gave a dead
    letter the broker refused (MSG_SIZE_TOO_LARGE), and its partition stayed paused for good."""
    headers = [
        ("trace", b"t" * 600_000),
        ("traceparent", b"00-abc-01"),
        ("baggage", b"b" * 500_000),
    ]
    letter = letter_for(original(headers=headers)).fitted(900_000)
    assert letter.headers == [("traceparent", b"00-abc-01")]
    assert letter.value == b"\xc3\x01avro-bytes" and letter.key == b"SKU-1"
    out = dict(letter.kafka_headers())
    assert out[HEADER_PREFIX + "headers.dropped"] == b"trace=600000,baggage=500000"
    assert _record_bytes(letter) < 20_000
    record = DeadLetterRecord.from_message(on_dlq(letter))
    assert record.reason == "object_missing"
    assert dict(record.details)["headers.dropped"] == "trace=600000,baggage=500000"


def test_a_large_key_is_cut_with_its_size_and_hash_when_the_letter_would_not_fit() -> None:
    key = b"K" * 950_000
    letter = letter_for(original(key=key)).fitted(900_000)
    assert letter.key == key[:1024]
    out = dict(letter.kafka_headers())
    assert out[HEADER_PREFIX + "key.truncated_from"] == b"950000"
    assert out[HEADER_PREFIX + "key.sha256"] == hashlib.sha256(key).hexdigest().encode()
    fits = letter_for(original(key=b"K" * 100 * 1024))
    assert fits.fitted(900_000) is fits  # 100 KB fits: kept whole, replayable as it was


def test_many_small_headers_that_do_not_fit_together_are_all_left_out() -> None:
    headers = [(f"h{i}", b"v" * 1000) for i in range(1200)]
    letter = letter_for(original(headers=headers, value=b"x" * 800_000)).fitted(900_000)
    assert letter.headers == [] and len(letter.headers_dropped) == 1200
    assert _record_bytes(letter) < 900_000
    assert len(dict(letter.kafka_headers())[HEADER_PREFIX + "headers.dropped"]) <= 4096
