"""Where a worker's messages come from: the one interface the runner drives.

Two sources: ``KafkaSource`` (a consumer group's member, partitions claimed with an
epoch and offsets stored fenced in PostgreSQL) and ``SqsSource`` (a queue: no offsets,
a message deleted once the batch that applied it committed). The runner, the pipeline
and the checkpoint are the same for both: one start-up, one health, one shutdown, the
same retries, breakers, pauses, re-planning and dead letters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from confluent_kafka import Message

from streamer.runtime.checkpoint import TransactionSource
from streamer.runtime.database import Database
from streamer.runtime.handler import Batch, TopicPartition
from streamer.runtime.metrics import RuntimeMetrics

__all__ = ["Assignment", "Source", "SourceContext"]

# "assign", "revoke", "lost" (a session that expired) or "fenced" (another worker claimed
# the partitions), and which partitions.
Assignment = Callable[[str, Sequence[TopicPartition]], None]


@dataclass(frozen=True)
class SourceContext:
    """What the runner lends a source (``attach``), before it starts."""

    database: Database
    metrics: RuntimeMetrics
    owner: str  # this worker's name, in claims and client ids
    changed: Assignment  # called on the event loop


class Source(Protocol):
    @property
    def store(self) -> TransactionSource:
        """The checkpoint's transactions (fenced offsets, or none)."""
        ...

    @property
    def generation(self) -> int:
        """Goes up whenever what this worker owns changes: a batch decoded ahead under an
        older generation is decoded again."""
        ...

    @property
    def paused(self) -> bool: ...

    def attach(self, ctx: SourceContext) -> None:
        """What the source needs from the worker; ``store`` is there from now on."""
        ...

    async def start(self, topics: Sequence[str]) -> None: ...

    async def poll(self, max_messages: int, wait_s: float) -> Batch:
        """The next messages this worker may apply (owned, and not applied before)."""
        ...

    def owns(self, msg: Message) -> bool: ...

    def positions(self, batch: Batch) -> Mapping[TopicPartition, tuple[int, int]]:
        """Where the batch's commit moves each partition, with the epoch it is fenced by."""
        ...

    async def committed(self, batch: Batch) -> None:
        """The batch committed: its messages are never applied again by this worker (and a
        queue deletes them; Kafka hears of the offsets for its lag tools)."""
        ...

    def fenced(self, partitions: Sequence[TopicPartition]) -> None: ...

    async def pause(self, paused: bool) -> None: ...

    async def idle(self, seconds: float) -> None:
        """Wait with the source paused, keeping this worker's place (a group member keeps
        polling, or the group would take its partitions)."""
        ...

    async def lag(self) -> dict[TopicPartition, int]: ...

    def not_ready(self) -> list[str]:
        """Why the source is not ready to consume, if it is not."""
        ...

    async def close(self, timeout_s: float) -> None: ...
