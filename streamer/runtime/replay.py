"""Reading the dead-letter topic back, and replaying dead letters to their original topic.

A replay sends the original message back to its topic with ``streamer.replay.*``
headers (attempts so far, first failure, where it came from) and its trace context (a
replay continues the trace the message was dead-lettered in) and records the dead
letter's position in PostgreSQL, so a second replay does not send it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg

from streamer.errors import ConfigError
from streamer.runtime import tracing
from streamer.runtime.database import connect
from streamer.runtime.deadletters import REPLAY_PREFIX, DeadLetterRecord
from streamer.runtime.publisher import Publisher
from streamer.runtime.readback import read_messages
from streamer.runtime.settings import DatabaseSettings, KafkaSettings

__all__ = [
    "DeadLetterFilter",
    "ReplayResult",
    "read_dead_letters",
    "replay_dead_letters",
    "replay_headers",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters a listing or a replay is about; unset fields match everything."""

    reason: str | None = None
    key: str | None = None  # the original message's key (a SKU, for the gallery's topics)
    topic: str | None = None
    job: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def matches(self, record: DeadLetterRecord) -> bool:
        if self.reason and record.reason != self.reason:
            return False
        if self.key and record.key_text != self.key:
            return False
        if self.topic and record.topic != self.topic:
            return False
        if self.job and record.job != self.job:
            return False
        when = record.last_failure_ms or 0
        if self.since_ms is not None and when < self.since_ms:
            return False
        return not (self.until_ms is not None and when > self.until_ms)


def read_dead_letters(
    kafka: KafkaSettings, topic: str, *, timeout_s: float = 10.0, idle_s: float = 0.5
) -> Iterator[DeadLetterRecord]:
    """Every dead letter in the topic (``read_messages``: to its end, past short watermarks)."""
    for msg in read_messages(kafka, topic, timeout_s=timeout_s, idle_s=idle_s):
        yield DeadLetterRecord.from_message(msg)


@dataclass
class ReplayResult:
    matched: int = 0
    replayed: int = 0
    already_replayed: int = 0
    records: list[DeadLetterRecord] = field(default_factory=list)
    end_offsets: dict[tuple[str, int], int] = field(default_factory=dict)


def replay_headers(record: DeadLetterRecord) -> list[tuple[str, bytes]]:
    """The original headers plus where the message comes from, how often it failed and its
    original timestamp: a replay is stamped now, since a week-old timestamp would be past
    the topic's retention (deleted before it is read) or refused by a broker that bounds
    timestamps."""
    return [
        *((k, v) for k, v in record.original_headers if not k.startswith(REPLAY_PREFIX)),
        (REPLAY_PREFIX + "attempts", str(record.attempts).encode()),
        (REPLAY_PREFIX + "first_failure", str(record.first_failure_ms or "").encode()),
        (REPLAY_PREFIX + "timestamp", str(record.timestamp_ms or "").encode()),
        (REPLAY_PREFIX + "from", f"dlq:{record.dlq_partition}:{record.dlq_offset}".encode()),
    ]


_CLAIM = """
INSERT INTO dead_letter_replays (dlq_topic, dlq_partition, dlq_offset, target_topic)
SELECT $1, p, o, t FROM unnest($2::int[], $3::bigint[], $4::text[]) AS c(p, o, t)
ON CONFLICT DO NOTHING
RETURNING dlq_partition, dlq_offset
"""


async def replay_dead_letters(
    kafka: KafkaSettings,
    database: DatabaseSettings,
    topic: str,
    chosen: DeadLetterFilter | list[DeadLetterRecord],
    *,
    dry_run: bool = False,
) -> ReplayResult:
    """Send matching dead letters back to their original topic, each at most once.

    ``chosen`` is a filter over the whole topic, or records already read (the
    console replays a selection). The rows of ``dead_letter_replays`` are claimed
    in a transaction that stays open until every replayed message is acknowledged
    by the broker: a failed delivery rolls the claims back (the next run sends
    them again), and a second replay running at the same time waits on the claimed
    rows and then skips them.
    """
    loop = asyncio.get_running_loop()
    if isinstance(chosen, DeadLetterFilter):
        wanted = chosen
        letters = await loop.run_in_executor(None, lambda: list(read_dead_letters(kafka, topic)))
        records = [r for r in letters if wanted.matches(r)]
    else:
        records = chosen
    result = ReplayResult(matched=len(records))
    if not records:
        return result
    async with connect(database.dsn) as conn:
        if dry_run:
            async with _table_required():
                done_rows = await conn.fetch(
                    "SELECT dlq_partition, dlq_offset FROM dead_letter_replays"
                    " WHERE dlq_topic = $1",
                    topic,
                )
            done = {(r["dlq_partition"], r["dlq_offset"]) for r in done_rows}
            result.records = [r for r in records if (r.dlq_partition, r.dlq_offset) not in done]
            result.already_replayed = len(records) - len(result.records)
            return result

        def send(todo: list[DeadLetterRecord]) -> dict[tuple[str, int], int]:
            with Publisher(kafka) as publisher:
                for r, headers in zip(todo, traced, strict=True):
                    publisher.produce(r.topic, r.value, key=r.key, headers=headers)
                publisher.flush()
                return dict(publisher.end_offsets)

        async with _table_required(), conn.transaction():
            claimed_rows = await conn.fetch(
                _CLAIM,
                topic,
                [r.dlq_partition for r in records],
                [r.dlq_offset for r in records],
                [r.topic for r in records],
            )
            claimed = {(row["dlq_partition"], row["dlq_offset"]) for row in claimed_rows}
            todo = [r for r in records if (r.dlq_partition, r.dlq_offset) in claimed]
            traced = [
                tracing.resent(r.topic, replay_headers(r), {"streamer.reason": r.reason})
                for r in todo
            ]
            if todo:
                result.end_offsets = await loop.run_in_executor(None, send, todo)
    result.records = todo
    result.replayed = len(todo)
    result.already_replayed = len(records) - len(todo)
    return result


@asynccontextmanager
async def _table_required() -> AsyncIterator[None]:
    try:
        yield
    except asyncpg.UndefinedTableError as exc:
        raise ConfigError(
            "table dead_letter_replays does not exist in this database; "
            "run `streamer db migrate` first"
        ) from exc
