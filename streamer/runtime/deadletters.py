"""Dead letters: what goes on the dead-letter topic, and how a dead letter is read back.

A dead letter is the original message (key, value, headers), stamped when it was
dead-lettered, plus
``streamer.error.*`` headers in the spirit of Kafka Connect's
``__connect.errors.*``: reason, message, exception class, original topic,
partition, offset and timestamp, attempts, the job and consumer group that
failed, first and last failure time, and (while tracing is on) the ``trace_id`` of
the failed message's trace. Every job shares one dead-letter topic; the ``job`` and
``group`` headers say whose it is.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "HEADER_PREFIX",
    "REPLAY_PREFIX",
    "DeadLetter",
    "DeadLetterRecord",
    "attempts_from_headers",
]

HEADER_PREFIX = "streamer.error."
REPLAY_PREFIX = "streamer.replay."
_MAX_MESSAGE_BYTES = 4096
_KEPT_BYTES = 1024  # what is kept of an oversized value or key


def _truncated_utf8(text: str, max_bytes: int) -> bytes:
    """At most ``max_bytes`` of UTF-8, never ending inside a character."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore").encode("utf-8")


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _int(value: bytes | str | None) -> int | None:
    text = _text(value)
    try:
        return int(text) if text not in (None, "") else None
    except ValueError:
        return None


def attempts_from_headers(headers: list[tuple[str, bytes]] | None) -> tuple[int, int | None]:
    """(attempts so far, first failure ms) of a message that came back from a replay."""
    found = dict(headers or [])
    return (
        _int(found.get(REPLAY_PREFIX + "attempts")) or 0,
        _int(found.get(REPLAY_PREFIX + "first_failure")),
    )


@dataclass(frozen=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp_ms: int | None
    topic: str
    partition: int
    offset: int
    reason: str
    message: str
    exception_class: str
    group_id: str
    job: str = ""
    attempts: int = 1
    first_failure_ms: int | None = None
    last_failure_ms: int | None = None
    truncated_from: int | None = None
    value_sha256: str | None = None
    details: tuple[tuple[str, str], ...] = ()
    key_truncated_from: int | None = None
    key_sha256: str | None = None
    headers_dropped: tuple[tuple[str, int], ...] = ()  # original headers left out, with sizes
    trace_id: str | None = None  # the trace of its message, while tracing is on

    @property
    def token(self) -> tuple[str, str, int, int]:
        """Identifies the dead letter of one message, so a retried batch does not send it twice."""
        return ("dlq", self.topic, self.partition, self.offset)

    def fitted(self, max_value_bytes: int) -> DeadLetter:
        """A letter whose value fits the dead-letter topic's message size.

        An oversized original is cut to its first KiB, with its size and SHA-256 in the
        headers: the reason still reaches the topic instead of failing the batch forever.
        The broker bounds the whole record, so the original's key and headers count too:
        when together they do not fit, a key over 1 KiB is cut the same way and original
        headers over 1 KiB are left out (their names and sizes in a header), then the value
        is cut, then every original header is left out.
        """
        letter = self
        if letter.value is not None and len(letter.value) > max_value_bytes:
            letter = letter._value_cut()
        if letter._original_bytes() <= max_value_bytes:
            return letter
        if letter.key is not None and len(letter.key) > _KEPT_BYTES:
            letter = replace(
                letter,
                key=letter.key[:_KEPT_BYTES],
                key_truncated_from=len(letter.key),
                key_sha256=hashlib.sha256(letter.key).hexdigest(),
            )
        letter = letter._headers_left_out(lambda size: size > _KEPT_BYTES)
        if (
            letter._original_bytes() > max_value_bytes
            and letter.truncated_from is None
            and len(letter.value or b"") > _KEPT_BYTES
        ):
            letter = letter._value_cut()
        if letter._original_bytes() > max_value_bytes:
            letter = letter._headers_left_out(lambda size: True)
        return letter

    def _value_cut(self) -> DeadLetter:
        value = self.value or b""
        return replace(
            self,
            value=value[:_KEPT_BYTES],
            truncated_from=len(value),
            value_sha256=hashlib.sha256(value).hexdigest(),
        )

    def _headers_left_out(self, left_out: Callable[[int], bool]) -> DeadLetter:
        kept: list[tuple[str, bytes]] = []
        dropped = list(self.headers_dropped)
        for name, value in self.headers:
            size = len(name.encode("utf-8")) + len(value or b"")
            if left_out(size):
                dropped.append((name, len(value or b"")))
            else:
                kept.append((name, value))
        return replace(self, headers=kept, headers_dropped=tuple(dropped))

    def _original_bytes(self) -> int:
        return (
            len(self.key or b"")
            + len(self.value or b"")
            + sum(len(k.encode("utf-8")) + len(v or b"") for k, v in self.headers)
        )

    @classmethod
    def from_error(
        cls,
        msg: Any,
        error: BaseException,
        *,
        group_id: str,
        job: str = "",
        attempts: int | None = None,
        details: dict[str, str] | None = None,
    ) -> DeadLetter:
        """The dead letter for ``msg``.

        A message that failed before and came back from a replay carries its attempts
        and first failure time in headers: this failure counts one more attempt and
        keeps that first failure time and original timestamp. ``details`` are extra ``streamer.error.*``
        headers a job adds (what its key is, e.g. ``sku``; an HTTP status, a response
        excerpt); never secrets.
        """
        now = int(time.time() * 1000)
        _kind, ts = msg.timestamp()
        previous, first_failure_ms = attempts_from_headers(msg.headers())
        replayed_ts = _int(dict(msg.headers() or []).get(REPLAY_PREFIX + "timestamp"))
        return cls(
            key=msg.key(),
            value=msg.value(),
            headers=list(msg.headers() or []),
            timestamp_ms=replayed_ts or (ts if ts and ts > 0 else None),
            topic=msg.topic() or "",
            partition=msg.partition() or 0,
            offset=msg.offset() or 0,
            reason=str(getattr(error, "reason", "unexpected_error")),
            message=str(getattr(error, "message", None) or error),
            exception_class=f"{type(error).__module__}.{type(error).__qualname__}",
            group_id=group_id,
            job=job,
            attempts=attempts if attempts is not None else previous + 1,
            first_failure_ms=first_failure_ms or now,
            last_failure_ms=now,
            details=tuple(sorted((details or {}).items())),
        )

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        kept = [
            (k, v)
            for k, v in self.headers
            if not k.startswith(HEADER_PREFIX) and not k.startswith(REPLAY_PREFIX)
        ]
        message = _truncated_utf8(self.message, _MAX_MESSAGE_BYTES)
        error: dict[str, str | bytes] = {
            "reason": self.reason,
            "message": message,
            "exception.class": self.exception_class,
            "topic": self.topic,
            "partition": str(self.partition),
            "offset": str(self.offset),
            "timestamp": str(self.timestamp_ms or ""),
            "attempts": str(self.attempts),
            "group": self.group_id,
            "job": self.job,
            "first_failure": str(self.first_failure_ms or ""),
            "last_failure": str(self.last_failure_ms or ""),
        }
        if self.trace_id:
            error["trace_id"] = self.trace_id
        if self.truncated_from is not None:
            error["value.truncated_from"] = str(self.truncated_from)
            error["value.sha256"] = self.value_sha256 or ""
        if self.key_truncated_from is not None:
            error["key.truncated_from"] = str(self.key_truncated_from)
            error["key.sha256"] = self.key_sha256 or ""
        if self.headers_dropped:
            listed = ",".join(f"{name}={size}" for name, size in self.headers_dropped)
            error["headers.dropped"] = _truncated_utf8(listed, _MAX_MESSAGE_BYTES)
        for name, value in self.details:
            error.setdefault(name, _truncated_utf8(value, _MAX_MESSAGE_BYTES))
        return kept + [
            (HEADER_PREFIX + k, v if isinstance(v, bytes) else v.encode("utf-8"))
            for k, v in error.items()
        ]


@dataclass(frozen=True)
class DeadLetterRecord:
    """A dead letter as read back from the topic."""

    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    key: bytes | None
    value: bytes | None
    original_headers: list[tuple[str, bytes]]
    reason: str
    message: str
    exception_class: str
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    attempts: int
    group_id: str
    first_failure_ms: int | None
    last_failure_ms: int | None
    job: str = ""
    details: tuple[tuple[str, str], ...] = ()  # what the job added (e.g. ``sku``)
    trace_id: str | None = None

    @classmethod
    def from_message(cls, msg: Any) -> DeadLetterRecord:
        headers = list(msg.headers() or [])
        error = {k[len(HEADER_PREFIX) :]: v for k, v in headers if k.startswith(HEADER_PREFIX)}
        known = {
            "reason", "message", "exception.class", "topic", "partition", "offset",
            "timestamp", "attempts", "group", "job", "first_failure", "last_failure",
            "trace_id",
        }  # fmt: skip
        return cls(
            dlq_topic=msg.topic(),
            dlq_partition=msg.partition(),
            dlq_offset=msg.offset(),
            key=msg.key(),
            value=msg.value(),
            original_headers=[(k, v) for k, v in headers if not k.startswith(HEADER_PREFIX)],
            reason=_text(error.get("reason")) or "unknown",
            message=_text(error.get("message")) or "",
            exception_class=_text(error.get("exception.class")) or "",
            topic=_text(error.get("topic")) or "",
            partition=_int(error.get("partition")) or 0,
            offset=_int(error.get("offset")) or 0,
            timestamp_ms=_int(error.get("timestamp")),
            attempts=_int(error.get("attempts")) or 1,
            group_id=_text(error.get("group")) or "",
            first_failure_ms=_int(error.get("first_failure")),
            last_failure_ms=_int(error.get("last_failure")),
            job=_text(error.get("job")) or "",
            trace_id=_text(error.get("trace_id")),
            details=tuple(sorted((k, _text(v) or "") for k, v in error.items() if k not in known)),
        )

    def detail(self, name: str) -> str | None:
        """A header the failing job added, e.g. ``detail("sku")``."""
        return dict(self.details).get(name)

    @property
    def key_text(self) -> str | None:
        return self.key.decode("utf-8", "replace") if self.key is not None else None

    @property
    def last_failure(self) -> datetime | None:
        ms = self.last_failure_ms
        return datetime.fromtimestamp(ms / 1000, UTC) if ms else None
