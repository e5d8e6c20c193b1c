"""Bucket notifications in, object changes out. Pure: no I/O.

One record format behind several envelopes: the S3 event record (``eventName``,
``s3.bucket.name``, ``s3.object.key`` URL-encoded, ``eTag``, ``size``, ``sequencer``),
as AWS sends it to SQS (``{"Records": [...]}``, possibly inside an SNS envelope),
as MinIO publishes it to Kafka (``{"EventName", "Key", "Records": [...]}``), and
Cloudflare R2's queue message (``{"action", "bucket", "object": {...}}``). S3's
``s3:TestEvent`` (sent when a notification is configured) changes nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote_plus

from streamer.contract.errors import DecodeError

__all__ = [
    "OBSERVATION_SKEW",
    "ObjectChange",
    "Parsed",
    "latest_per_key",
    "newer",
    "parse_notification",
    "sequencer_key",
]

# An observation of this host (a look-up, a key absent from a listing) is dated this much
# earlier than its own clock says: S3's clock (the notifications' event time) and this host's
# may differ, and a notification of a change near the observation must win over it.
OBSERVATION_SKEW = timedelta(minutes=5)
_MAX_SIZE = 2**63 - 1
_R2_CREATED = frozenset({"PutObject", "CopyObject", "CompleteMultipartUpload"})
_R2_DELETED = frozenset({"DeleteObject", "LifecycleDeletion"})


@dataclass(frozen=True, slots=True)
class ObjectChange:
    """What one record says about one object key (a delete carries no ETag)."""

    bucket: str
    key: str
    deleted: bool
    etag: str | None
    size: int | None
    event_time: datetime
    sequencer: str | None = None
    content_type: str | None = None


@dataclass
class Parsed:
    changes: list[ObjectChange] = field(default_factory=list)
    ignored: Counter[str] = field(default_factory=Counter)  # reason -> records


def sequencer_key(sequencer: str, width: int) -> str:
    """A sequencer comparable as text: upper-case, left-padded with zeros to ``width``
    (AWS: "left pad the shorter value with zeros, then compare lexicographically")."""
    return sequencer.upper().rjust(width, "0")


def newer(candidate: tuple[str | None, datetime], current: tuple[str | None, datetime]) -> bool:
    """Whether a record (sequencer, event time) supersedes what is indexed.

    Sequencers order events of one key when both sides have one; otherwise event time
    does (moto sends none; listings and look-ups have none). A tie in time is taken as
    newer: the later delivery wins where nothing else can tell.
    """
    (seq, when), (cur_seq, cur_when) = candidate, current
    if seq is not None and cur_seq is not None:
        width = max(len(seq), len(cur_seq))
        return sequencer_key(seq, width) > sequencer_key(cur_seq, width)
    return when >= cur_when


def _bad(message: str, reason: str = "invalid_notification") -> DecodeError:
    return DecodeError(message, reason=reason)


def _time(value: Any) -> datetime:
    if not isinstance(value, str) or not value:
        raise _bad(f"eventTime {value!r} is not an ISO-8601 time")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _bad(f"eventTime {value!r} is not an ISO-8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _etag(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _bad(f"eTag {value!r} is not a string")
    return value.strip('"') or None


def _size(value: Any) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not 0 <= value <= _MAX_SIZE:
        raise _bad(f"size {value!r} is not a byte count")
    return value


def _sequencer(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _bad(f"sequencer {value!r} is not a string")
    try:
        int(value, 16)
    except ValueError:
        raise _bad(f"sequencer {value!r} is not hexadecimal") from None
    return value.upper()


def _key(key: str) -> str:
    if "\x00" in key:  # PostgreSQL text cannot hold it; no gallery path can name it either
        raise _bad(f"object key {key[:80]!r} contains a NUL character")
    return key


def _s3_record(record: Any, parsed: Parsed) -> None:
    if not isinstance(record, Mapping):
        raise _bad("a record is not an object")
    name = record.get("eventName")
    s3 = record.get("s3")
    if not isinstance(name, str) or not isinstance(s3, Mapping):
        raise _bad("a record has no eventName or s3 section")
    name = name.removeprefix("s3:")
    if name.startswith("ObjectCreated:"):
        deleted = False
    elif name.startswith("ObjectRemoved:"):
        deleted = True
    else:
        parsed.ignored["other_event"] += 1  # restores, tagging, ACLs: the bytes stay the same
        return
    bucket, obj = s3.get("bucket"), s3.get("object")
    if not isinstance(bucket, Mapping) or not isinstance(obj, Mapping):
        raise _bad("a record has no s3.bucket or s3.object")
    bucket_name, raw_key = bucket.get("name"), obj.get("key")
    if not isinstance(bucket_name, str) or not isinstance(raw_key, str) or not raw_key:
        raise _bad("a record has no bucket name or object key")
    etag = None if deleted else _etag(obj.get("eTag") or obj.get("etag"))
    if not deleted and etag is None:
        raise _bad(f"{name} of {raw_key!r} carries no eTag")
    parsed.changes.append(
        ObjectChange(
            bucket=bucket_name,
            key=_key(unquote_plus(raw_key)),
            deleted=deleted,
            etag=etag,
            size=None if deleted else _size(obj.get("size")),
            event_time=_time(record.get("eventTime")),
            sequencer=_sequencer(obj.get("sequencer")),
            content_type=obj.get("contentType")
            if isinstance(obj.get("contentType"), str)
            else None,
        )
    )


def _r2_message(body: Mapping[str, Any], parsed: Parsed) -> None:
    action, obj = body.get("action"), body.get("object")
    bucket = body.get("bucket")
    if not isinstance(obj, Mapping) or not isinstance(bucket, str):
        raise _bad("an R2 notification has no bucket or object")
    if action in _R2_CREATED:
        deleted = False
    elif action in _R2_DELETED:
        deleted = True
    else:
        parsed.ignored["other_event"] += 1
        return
    key = obj.get("key")
    if not isinstance(key, str) or not key:
        raise _bad("an R2 notification has no object key")
    etag = None if deleted else _etag(obj.get("eTag"))
    if not deleted and etag is None:
        raise _bad(f"{action} of {key!r} carries no eTag")
    parsed.changes.append(
        ObjectChange(
            bucket=bucket,
            key=_key(key),  # R2 sends keys as they are
            deleted=deleted,
            etag=etag,
            size=None if deleted else _size(obj.get("size")),
            event_time=_time(body.get("eventTime")),
        )
    )


def _envelope(body: Any, parsed: Parsed, depth: int = 0) -> None:
    if not isinstance(body, Mapping):
        raise _bad("the notification is not a JSON object")
    if body.get("Event") == "s3:TestEvent":
        parsed.ignored["test_event"] += 1
        return
    if "Records" in body:
        records = body["Records"]
        if not isinstance(records, list):
            raise _bad("Records is not a list")
        for record in records:
            _s3_record(record, parsed)
        return
    if body.get("Type") == "Notification" and isinstance(body.get("Message"), str) and depth < 2:
        _envelope(_json(body["Message"]), parsed, depth + 1)  # SNS in front of SQS
        return
    if "action" in body and "object" in body:
        _r2_message(body, parsed)
        return
    raise _bad("neither S3 event records, an S3 test event nor an R2 notification")


def _json(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(f"not JSON: {exc}", reason="undecodable") from None


def parse_notification(raw: bytes | str | None) -> Parsed:
    """Every object change a notification carries, in its order; ``DecodeError`` (with its
    reason) for what is not a notification, so the message is dead-lettered whole."""
    if raw is None:
        raise _bad("message value is null", reason="null_value")
    parsed = Parsed()
    _envelope(_json(raw), parsed)
    return parsed


def latest_per_key(changes: Iterable[ObjectChange]) -> dict[tuple[str, str], ObjectChange]:
    """The newest change of each (bucket, key) among ``changes`` (later ones win ties)."""
    out: dict[tuple[str, str], ObjectChange] = {}
    for change in changes:
        k = (change.bucket, change.key)
        cur = out.get(k)
        if cur is None or newer(
            (change.sequencer, change.event_time), (cur.sequencer, cur.event_time)
        ):
            out[k] = change
    return out
