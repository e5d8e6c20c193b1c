"""Dead letters: what goes on the dead-letter topic, how it is read back, and how it is replayed.

A dead letter is the original message (key, value, headers, timestamp) plus
``streamer.error.*`` headers in the spirit of Kafka Connect's
``__connect.errors.*``: reason, message, exception class, original topic,
partition, offset and timestamp, attempts, consumer group, first and last
failure time. A replay sends the original back to its topic and records the
dead letter's position in PostgreSQL, so a second replay does not send it again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from confluent_kafka import Consumer, KafkaException, TopicPartition

from streamer.config import Settings
from streamer.db import _converted
from streamer.errors import BrokerUnavailable, ConfigError

__all__ = [
    "HEADER_PREFIX",
    "DeadLetter",
    "DeadLetterRecord",
    "ReplayResult",
    "attempts_from_headers",
    "matches",
    "read_dead_letters",
    "replay_dead_letters",
    "replay_headers",
]

log = logging.getLogger(__name__)

HEADER_PREFIX = "streamer.error."
REPLAY_PREFIX = "streamer.replay."
_MAX_MESSAGE_BYTES = 4096


def _truncated_utf8(text: str, max_bytes: int) -> bytes:
    """At most ``max_bytes`` of UTF-8, never ending inside a character."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore").encode("utf-8")


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
        attempts: int | None = None,
        sku: str | None = None,
    ) -> DeadLetter:
        """The dead letter for ``msg``.

        A message that failed before and came back from a replay carries its attempts
        and first failure time in headers: this failure counts one more attempt and
        keeps that first failure time.
        """
        now = _now_ms()
        _kind, ts = msg.timestamp()
        previous, first_failure_ms = attempts_from_headers(msg.headers())
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
            attempts=attempts if attempts is not None else previous + 1,
            first_failure_ms=first_failure_ms or now,
            last_failure_ms=now,
            sku=sku,
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
    """Every dead letter in the topic, from each partition's low watermark to its end.

    A plain assigned consumer: no group membership, nothing committed. High
    watermarks alone are not trusted as the end (the Tansu dev broker reports them
    short when records share a batch), so reading goes on past them until the topic
    stays quiet for ``idle_s``. ``timeout_s`` bounds the time without progress, not
    the whole read, so a large topic is read to the end; a read that stalls short of
    the watermarks stops with a warning naming the partitions left unread.
    """
    consumer = Consumer(
        settings.kafka_config(
            **{
                "group.id": f"{settings.group_id}-dlq-reader",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "fetch.wait.max.ms": settings.fetch_wait_max_ms,
                "enable.partition.eof": False,
            }
        )
    )
    topic = settings.dlq_topic
    try:
        try:
            meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        except KafkaException as exc:
            raise BrokerUnavailable(
                f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}"
            ) from exc
        if meta is None or meta.error is not None:
            return
        ends: dict[int, int] = {}
        positions: dict[int, int] = {}
        for p in meta.partitions:
            try:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=timeout_s
                )
            except KafkaException as exc:
                raise BrokerUnavailable(f"cannot read the offsets of {topic}[{p}]: {exc}") from exc
            ends[p] = high
            positions[p] = max(low, 0)
        assignment = [TopicPartition(topic, p, offset) for p, offset in positions.items()]
        consumer.assign(assignment)
        quiet_since = time.monotonic()
        while True:
            batch = consumer.consume(500, 0.1)
            for msg in batch:
                if msg.error() is not None:
                    continue
                positions[msg.partition() or 0] = (msg.offset() or 0) + 1
                yield DeadLetterRecord.from_message(msg)
            now = time.monotonic()
            if batch:
                quiet_since = now
                continue
            # The consumer's position also moves past records it never hands out
            # (transaction markers), which message offsets alone would miss.
            for tp in consumer.position(assignment):
                if tp.offset >= 0:
                    positions[tp.partition] = max(positions[tp.partition], tp.offset)
            short = {p: (positions[p], end) for p, end in ends.items() if positions[p] < end}
            if not short and now - quiet_since >= idle_s:
                return
            if now - quiet_since >= timeout_s:
                log.warning(
                    "reading %s stalled for %.0fs short of its end: %s",
                    topic,
                    timeout_s,
                    ", ".join(f"[{p}] at {at} of {end}" for p, (at, end) in sorted(short.items())),
                )
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


def replay_headers(record: DeadLetterRecord) -> list[tuple[str, bytes]]:
    """The original headers plus where the message comes from and how often it failed."""
    return [
        *((k, v) for k, v in record.original_headers if not k.startswith(REPLAY_PREFIX)),
        (REPLAY_PREFIX + "attempts", str(record.attempts).encode()),
        (REPLAY_PREFIX + "first_failure", str(record.first_failure_ms or "").encode()),
        (REPLAY_PREFIX + "from", f"dlq:{record.dlq_partition}:{record.dlq_offset}".encode()),
    ]


_CLAIM = """
INSERT INTO dead_letter_replays (dlq_topic, dlq_partition, dlq_offset, target_topic)
SELECT $1, p, o, t FROM unnest($2::int[], $3::bigint[], $4::text[]) AS c(p, o, t)
ON CONFLICT DO NOTHING
RETURNING dlq_partition, dlq_offset
"""


async def replay_dead_letters(
    settings: Settings,
    *,
    reason: str | None = None,
    sku: str | None = None,
    topic: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    dry_run: bool = False,
) -> ReplayResult:
    """Send matching dead letters back to their original topic, each at most once.

    The rows of ``dead_letter_replays`` are claimed in a transaction that stays open
    until every replayed message is acknowledged by the broker: a failed delivery
    rolls the claims back (the next run sends them again), and a second replay running
    at the same time waits on the claimed rows and then skips them.
    """
    import asyncio

    from streamer.publisher import Publisher

    loop = asyncio.get_running_loop()
    letters = await loop.run_in_executor(None, lambda: list(read_dead_letters(settings)))
    chosen = [
        r
        for r in letters
        if matches(r, reason=reason, sku=sku, topic=topic, since_ms=since_ms, until_ms=until_ms)
    ]
    result = ReplayResult(matched=len(chosen))
    if not chosen:
        return result
    async with _converted():
        conn = await asyncpg.connect(settings.database_dsn, timeout=10)
    try:
        if dry_run:
            async with _converted(), _table_required():
                done_rows = await conn.fetch(
                    "SELECT dlq_partition, dlq_offset FROM dead_letter_replays"
                    " WHERE dlq_topic = $1",
                    settings.dlq_topic,
                )
            done = {(r["dlq_partition"], r["dlq_offset"]) for r in done_rows}
            result.records = [r for r in chosen if (r.dlq_partition, r.dlq_offset) not in done]
            result.already_replayed = len(chosen) - len(result.records)
            return result

        def send(todo: list[DeadLetterRecord]) -> dict[tuple[str, int], int]:
            with Publisher(settings) as publisher:
                for r in todo:
                    publisher.produce(
                        r.topic,
                        r.value,
                        key=r.key,
                        headers=replay_headers(r),
                        timestamp_ms=r.timestamp_ms,
                    )
                publisher.flush()
                return dict(publisher.end_offsets)

        async with _converted(), _table_required(), conn.transaction():
            claimed_rows = await conn.fetch(
                _CLAIM,
                settings.dlq_topic,
                [r.dlq_partition for r in chosen],
                [r.dlq_offset for r in chosen],
                [r.topic for r in chosen],
            )
            claimed = {(row["dlq_partition"], row["dlq_offset"]) for row in claimed_rows}
            todo = [r for r in chosen if (r.dlq_partition, r.dlq_offset) in claimed]
            if todo:
                result.end_offsets = await loop.run_in_executor(None, send, todo)
        result.records = todo
        result.replayed = len(todo)
        result.already_replayed = len(chosen) - len(todo)
        return result
    finally:
        await conn.close()


@asynccontextmanager
async def _table_required() -> AsyncIterator[None]:
    try:
        yield
    except asyncpg.UndefinedTableError as exc:
        raise ConfigError(
            "table dead_letter_replays does not exist in this database; "
            "run `streamer db migrate` first"
        ) from exc
