"""Dead letters: what goes on the dead-letter topic, how it is read back, and how it is replayed.

A dead letter is the original message (key, value, headers, timestamp) plus
``streamer.error.*`` headers in the spirit of Kafka Connect's
``__connect.errors.*``: reason, message, exception class, original topic,
partition, offset and timestamp, attempts, consumer group, first and last
failure time. A replay sends the original back to its topic and records the
dead letter's position in PostgreSQL, so a second replay does not send it again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from confluent_kafka import Consumer, KafkaException, TopicPartition

from streamer.config import Settings
from streamer.db import _converted
from streamer.errors import BrokerUnavailable

__all__ = [
    "HEADER_PREFIX",
    "DeadLetter",
    "DeadLetterRecord",
    "ReplayResult",
    "attempts_from_headers",
    "read_dead_letters",
    "replay_dead_letters",
]

HEADER_PREFIX = "streamer.error."
REPLAY_PREFIX = "streamer.replay."
_MAX_MESSAGE_BYTES = 4096


def _now_ms() -> int:
    return int(time.time() * 1000)


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
    attempts: int = 1
    first_failure_ms: int | None = None
    last_failure_ms: int | None = None
    sku: str | None = None
    truncated_from: int | None = None
    value_sha256: str | None = None

    def fitted(self, max_value_bytes: int) -> DeadLetter:
        """A letter whose value fits the dead-letter topic's message size.

        An oversized original is cut to its first KiB, with its size and SHA-256 in the
        headers: the reason still reaches the topic instead of failing the batch forever.
        """
        if self.value is None or len(self.value) <= max_value_bytes:
            return self
        import hashlib
        from dataclasses import replace

        return replace(
            self,
            value=self.value[:1024],
            truncated_from=len(self.value),
            value_sha256=hashlib.sha256(self.value).hexdigest(),
        )

    @classmethod
    def from_error(
        cls,
        msg: Any,
        error: BaseException,
        *,
        group_id: str,
        attempts: int = 1,
        sku: str | None = None,
    ) -> DeadLetter:
        now = _now_ms()
        _kind, ts = msg.timestamp()
        return cls(
            key=msg.key(),
            value=msg.value(),
            headers=list(msg.headers() or []),
            timestamp_ms=ts if ts and ts > 0 else None,
            topic=msg.topic() or "",
            partition=msg.partition() or 0,
            offset=msg.offset() or 0,
            reason=str(getattr(error, "reason", "unexpected_error")),
            message=str(getattr(error, "message", None) or error),
            exception_class=f"{type(error).__module__}.{type(error).__qualname__}",
            group_id=group_id,
            attempts=attempts,
            first_failure_ms=now,
            last_failure_ms=now,
            sku=sku,
        )

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        kept = [
            (k, v)
            for k, v in self.headers
            if not k.startswith(HEADER_PREFIX) and not k.startswith(REPLAY_PREFIX)
        ]
        message = self.message.encode("utf-8")[:_MAX_MESSAGE_BYTES]
        error = {
            "reason": self.reason,
            "message": message,
            "exception.class": self.exception_class,
            "topic": self.topic,
            "partition": str(self.partition),
            "offset": str(self.offset),
            "timestamp": str(self.timestamp_ms or ""),
            "attempts": str(self.attempts),
            "group": self.group_id,
            "first_failure": str(self.first_failure_ms or ""),
            "last_failure": str(self.last_failure_ms or ""),
        }
        if self.sku:
            error["sku"] = self.sku
        if self.truncated_from is not None:
            error["value.truncated_from"] = str(self.truncated_from)
            error["value.sha256"] = self.value_sha256 or ""
        return kept + [
            (HEADER_PREFIX + k, v if isinstance(v, bytes) else v.encode("utf-8"))
            for k, v in error.items()
        ]


@dataclass(frozen=True)
class DeadLetterRecord:
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
    sku: str | None

    @classmethod
    def from_message(cls, msg: Any) -> DeadLetterRecord:
        headers = list(msg.headers() or [])
        error = {k[len(HEADER_PREFIX) :]: v for k, v in headers if k.startswith(HEADER_PREFIX)}
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
            sku=_text(error.get("sku")),
        )

    @property
    def last_failure(self) -> datetime | None:
        from datetime import UTC

        ms = self.last_failure_ms
        return datetime.fromtimestamp(ms / 1000, UTC) if ms else None


def read_dead_letters(
    settings: Settings, *, timeout_s: float = 10.0, idle_s: float = 0.5
) -> Iterator[DeadLetterRecord]:
    """Every dead letter in the topic; returns once nothing new arrives for ``idle_s``.

    High watermarks alone are not trusted as the end (the Tansu dev broker reports
    them short when records share a batch): reading goes on past them until the
    topic stays quiet.
    """
    consumer = Consumer(
        settings.kafka_config(
            **{
                "group.id": f"{settings.group_id}-dlq-reader",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": settings.fetch_wait_max_ms,
                "enable.partition.eof": False,
            }
        )
    )
    try:
        try:
            meta = consumer.list_topics(settings.dlq_topic, timeout=timeout_s).topics.get(
                settings.dlq_topic
            )
        except KafkaException as exc:
            raise BrokerUnavailable(
                f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}"
            ) from exc
        if meta is None or meta.error is not None:
            return
        ends: dict[int, int] = {}
        assignment = []
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(settings.dlq_topic, p), timeout=timeout_s
            )
            ends[p] = high
            assignment.append(TopicPartition(settings.dlq_topic, p, max(low, 0)))
        consumer.assign(assignment)
        positions = {p: tp.offset for p, tp in zip(meta.partitions, assignment, strict=True)}
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.consume(500, 0.1)
            for msg in batch:
                if msg.error() is not None:
                    continue
                positions[msg.partition()] = msg.offset() + 1
                yield DeadLetterRecord.from_message(msg)
            if batch:
                quiet_since = time.monotonic()
                continue
            reached = all(positions.get(p, 0) >= end for p, end in ends.items())
            if reached and time.monotonic() - quiet_since >= idle_s:
                return
    finally:
        consumer.close()


@dataclass
class ReplayResult:
    matched: int = 0
    replayed: int = 0
    already_replayed: int = 0
    records: list[DeadLetterRecord] = field(default_factory=list)
    end_offsets: dict[tuple[str, int], int] = field(default_factory=dict)


def matches(
    record: DeadLetterRecord,
    *,
    reason: str | None = None,
    sku: str | None = None,
    topic: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> bool:
    if reason and record.reason != reason:
        return False
    if sku and record.sku != sku and _text(record.key) != sku:
        return False
    if topic and record.topic != topic:
        return False
    when = record.last_failure_ms or 0
    if since_ms is not None and when < since_ms:
        return False
    return not (until_ms is not None and when > until_ms)


async def replay_dead_letters(
    settings: Settings,
    *,
    reason: str | None = None,
    sku: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    dry_run: bool = False,
) -> ReplayResult:
    """Send matching dead letters back to their original topic, each at most once."""
    import asyncio

    from streamer.publisher import Publisher

    loop = asyncio.get_running_loop()
    letters = await loop.run_in_executor(None, lambda: list(read_dead_letters(settings)))
    result = ReplayResult()
    chosen = [
        r
        for r in letters
        if matches(r, reason=reason, sku=sku, since_ms=since_ms, until_ms=until_ms)
    ]
    result.matched = len(chosen)
    async with _converted():
        conn = await asyncpg.connect(settings.database_dsn, timeout=10)
    try:
        async with _converted():
            done_rows = await conn.fetch(
                "SELECT dlq_partition, dlq_offset FROM dead_letter_replays WHERE dlq_topic = $1",
                settings.dlq_topic,
            )
        done = {(r["dlq_partition"], r["dlq_offset"]) for r in done_rows}
        todo = [r for r in chosen if (r.dlq_partition, r.dlq_offset) not in done]
        result.already_replayed = len(chosen) - len(todo)
        result.records = todo
        if dry_run or not todo:
            return result

        def send() -> dict[tuple[str, int], int]:
            with Publisher(settings) as publisher:
                for r in todo:
                    headers = [
                        *((k, v) for k, v in r.original_headers if not k.startswith(REPLAY_PREFIX)),
                        (REPLAY_PREFIX + "attempts", str(r.attempts).encode()),
                        (REPLAY_PREFIX + "first_failure", str(r.first_failure_ms or "").encode()),
                        (REPLAY_PREFIX + "from", f"dlq:{r.dlq_partition}:{r.dlq_offset}".encode()),
                    ]
                    publisher.produce(
                        r.topic, r.value, key=r.key, headers=headers, timestamp_ms=r.timestamp_ms
                    )
                publisher.flush()
                return dict(publisher.end_offsets)

        result.end_offsets = await loop.run_in_executor(None, send)
        async with _converted():
            await conn.executemany(
                "INSERT INTO dead_letter_replays (dlq_topic, dlq_partition, dlq_offset, target_topic) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                [(settings.dlq_topic, r.dlq_partition, r.dlq_offset, r.topic) for r in todo],
            )
        result.replayed = len(todo)
        return result
    finally:
        await conn.close()
