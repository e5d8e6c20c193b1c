"""Bucket notifications parsed in every envelope, and the per-key order of their records."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from streamer.contract.errors import DecodeError
from streamer.objectindex.records import (
    ObjectChange,
    latest_per_key,
    newer,
    parse_notification,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)


def s3_record(
    name: str = "ObjectCreated:Put",
    key: str = "media/a/b.jpg",
    etag: str | None = '"abc"',
    size: int | None = 12,
    sequencer: str | None = "0055AED6DCD90281E5",
    when: str = "2026-11-24T02:00:00.000Z",
    bucket: str = "media",
) -> dict[str, object]:
    obj: dict[str, object] = {"key": key}
    if etag is not None:
        obj["eTag"] = etag
    if size is not None:
        obj["size"] = size
    if sequencer is not None:
        obj["sequencer"] = sequencer
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventTime": when,
        "eventName": name,
        "s3": {"bucket": {"name": bucket}, "object": obj},
    }


def test_aws_records_with_url_encoded_keys() -> None:
    body = json.dumps({"Records": [s3_record(key="media/a+b/c%C3%A9+%281%29.jpg")]})
    parsed = parse_notification(body.encode())
    assert parsed.changes == [
        ObjectChange(
            bucket="media",
            key="media/a b/cé (1).jpg",
            deleted=False,
            etag="abc",
            size=12,
            event_time=T0,
            sequencer="0055AED6DCD90281E5",
        )
    ]


def test_minio_kafka_value_and_deletes() -> None:
    body = {
        "EventName": "s3:ObjectRemoved:Delete",
        "Key": "media/media/a/b.jpg",
        "Records": [s3_record(name="s3:ObjectRemoved:Delete", etag=None, size=None)],
    }
    (change,) = parse_notification(json.dumps(body)).changes
    assert change.deleted
    assert change.etag is None
    assert change.key == "media/a/b.jpg"


def test_sns_envelope_and_test_event_and_other_events() -> None:
    inner = json.dumps({"Records": [s3_record(), s3_record(name="ObjectTagging:Put")]})
    parsed = parse_notification(json.dumps({"Type": "Notification", "Message": inner}))
    assert len(parsed.changes) == 1
    assert parsed.ignored["other_event"] == 1
    test = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "media"}
    parsed = parse_notification(json.dumps(test))
    assert parsed.changes == []
    assert parsed.ignored["test_event"] == 1


def test_r2_queue_message() -> None:
    body = {
        "account": "x",
        "action": "PutObject",
        "bucket": "media",
        "object": {"key": "a b.jpg", "size": 3, "eTag": "e1"},
        "eventTime": "2026-11-24T02:00:00Z",
    }
    (change,) = parse_notification(json.dumps(body)).changes
    assert (change.key, change.etag, change.size, change.sequencer) == ("a b.jpg", "e1", 3, None)
    body["action"] = "DeleteObject"
    assert parse_notification(json.dumps(body)).changes[0].deleted


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\x00", "undecodable"),
        (b"not json", "undecodable"),
        (b"[1, 2]", "invalid_notification"),
        (json.dumps({"Records": [s3_record(etag=None)]}).encode(), "invalid_notification"),
        (json.dumps({"Records": [s3_record(sequencer="xyz")]}).encode(), "invalid_notification"),
        (json.dumps({"Records": [s3_record(when="yesterday")]}).encode(), "invalid_notification"),
        (json.dumps({"Records": [s3_record(size=-1)]}).encode(), "invalid_notification"),
        (json.dumps({"Records": [s3_record(size=2**64)]}).encode(), "invalid_notification"),
        (json.dumps({"Records": [s3_record(key="a%00b.jpg")]}).encode(), "invalid_notification"),
        (json.dumps({"hello": 1}).encode(), "invalid_notification"),
        (None, "null_value"),
    ],
)
def test_what_is_not_a_notification_is_refused_with_its_reason(
    raw: bytes | None, reason: str
) -> None:
    with pytest.raises(DecodeError) as err:
        parse_notification(raw)
    assert err.value.reason == reason


def test_sequencers_compare_left_padded_and_time_is_the_fallback() -> None:
    later = T0 + timedelta(seconds=1)
    assert newer(("0055AED6DCD90281E6", T0), ("0055AED6DCD90281E5", later))
    assert not newer(("0055AED6DCD90281E5", later), ("0055AED6DCD90281E6", T0))
    # Different lengths: the shorter is left-padded, so a longer value is not simply later.
    assert newer(("100", T0), ("FF", T0))
    assert not newer(("0FF", T0), ("FF", T0))  # equal: a duplicate is not newer
    assert newer(("ff1", T0), ("FF0", T0))  # case does not matter
    # Without a sequencer on either side, event time; a tie goes to the later delivery.
    assert newer((None, later), ("AA", T0))
    assert not newer(("AA", T0), (None, later))
    assert newer((None, T0), (None, T0))


def test_latest_per_key_survives_out_of_order_and_duplicate_delivery() -> None:
    def change(seq: str, etag: str | None, key: str = "k") -> ObjectChange:
        return ObjectChange("b", key, etag is None, etag, None, T0, seq)

    put1, put2, delete = change("01", "e1"), change("02", "e2"), change("03", None)
    other = change("01", "x", key="other")
    for order in ([put1, put2, delete], [delete, put2, put1], [put2, delete, put1, delete, put2]):
        latest = latest_per_key([*order, other])
        assert latest[("b", "k")] == delete
        assert latest[("b", "other")] == other
