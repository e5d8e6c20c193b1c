"""What a job gives the runtime, and what crosses between them.

A job is a handler: which topics it reads, which dependencies it has (each gets a
circuit breaker), how it plans a batch and what it writes and publishes. The
runtime does the rest (group membership, ownership, the commit order, retries,
pauses, dead letters, draining, health and metrics). A handler runs in three steps:

- ``prepare(batch)``: decode, validate and look up, with no writes. The
  runtime may run it while the previous batch is still being committed, so it
  must not depend on that batch's writes.
- ``plan(prepared)``: whatever must see the previous batch's writes; it runs
  once that batch has committed.
- ``write(tx, plan)``: inside the checkpoint's transaction; returns the dead
  letters and output messages the checkpoint publishes before it commits.

Retriable errors (``DependencyUnavailable``) from any step make the runtime
pause and retry the batch; non-retriable problems of single messages become
dead letters in the ``Output``, never exceptions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from confluent_kafka import Message
from prometheus_client import CollectorRegistry

from streamer.runtime import tracing
from streamer.runtime.deadletters import DeadLetter

if TYPE_CHECKING:
    from streamer.runtime.checkpoint import Transaction
    from streamer.runtime.database import Database

__all__ = [
    "Batch",
    "Handler",
    "HandlerContext",
    "Output",
    "OutputMessage",
    "SimpleHandler",
    "start_handler",
]

P = TypeVar("P")
Q = TypeVar("Q")
TopicPartition = tuple[str, int]


@dataclass(frozen=True)
class Batch:
    """Messages of one poll, all of partitions this worker owns, each partition in order."""

    messages: Sequence[Message]
    # Its span while tracing is on (``tracing.begin_batch``); kept by ``keep``.
    trace: Any = field(default=None, compare=False, repr=False)

    @cached_property
    def next_offsets(self) -> dict[TopicPartition, int]:
        """The offset after each partition's last message: where the commit moves it."""
        out: dict[TopicPartition, int] = {}
        for msg in self.messages:
            tp = (msg.topic() or "", msg.partition() or 0)
            out[tp] = max(out.get(tp, 0), (msg.offset() or 0) + 1)
        return out

    def keep(self, wanted: Callable[[Message], bool]) -> Batch:
        return Batch([m for m in self.messages if wanted(m)], self.trace)

    def __len__(self) -> int:
        return len(self.messages)


@dataclass(frozen=True)
class OutputMessage:
    """A message a batch publishes; ``token`` names it across retries of the same batch."""

    topic: str
    value: bytes
    key: bytes | None
    token: Hashable
    headers: list[tuple[str, bytes]] | None = None


@dataclass
class Output:
    """What a batch publishes before its commit, and what it did (for logs and stats)."""

    letters: list[DeadLetter] = field(default_factory=list)
    messages: list[OutputMessage] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class HandlerContext:
    """What the runtime lends a handler when it starts."""

    job: str
    group_id: str
    registry: CollectorRegistry
    database: Database
    # Calls ``fn`` with retries and the named dependency's circuit breaker.
    call: Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]

    def dead_letter(
        self,
        msg: Message,
        error: BaseException,
        *,
        sku: str | None = None,
        details: Mapping[str, str] | None = None,
    ) -> DeadLetter:
        letter = DeadLetter.from_error(
            msg, error, group_id=self.group_id, job=self.job, sku=sku, details=dict(details or {})
        )
        return tracing.traced_letter(letter, msg)


class Handler(Protocol[Q, P]):
    """Q: what ``prepare`` finds out; P: the plan ``write`` carries out."""

    @property
    def name(self) -> str:
        """The job's name, in logs and in dead letters' ``job`` header."""
        ...

    @property
    def group_id(self) -> str: ...

    @property
    def topics(self) -> Sequence[str]: ...

    @property
    def dependencies(self) -> Sequence[str]:
        """What the job calls besides PostgreSQL and Kafka; each gets a circuit breaker."""
        ...

    async def start(self, ctx: HandlerContext) -> None: ...

    async def stop(self) -> None: ...

    async def prepare(self, batch: Batch) -> Q: ...

    async def plan(self, prepared: Q) -> P: ...

    async def write(self, tx: Transaction, plan: P) -> Output: ...

    def committed(self, plan: P, output: Output) -> None: ...


class SimpleHandler(Generic[P]):
    """Defaults for the optional steps, so a small handler writes only what it does:
    ``prepare`` and ``write``, with the prepared batch as its own plan."""

    name: str = "job"
    group_id: str = "streamer"
    topics: Sequence[str] = ()
    dependencies: Sequence[str] = ()
    ctx: HandlerContext

    async def start(self, ctx: HandlerContext) -> None:
        self.ctx = ctx

    async def stop(self) -> None:
        return None

    async def plan(self, prepared: P) -> P:
        return prepared

    def committed(self, plan: P, output: Output) -> None:
        return None


async def start_handler(
    handler: Handler[Any, Any],
    *,
    registry: CollectorRegistry,
    database: Database,
    call: Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]],
) -> None:
    """Start a handler with what the runtime lends it, whatever source feeds its batches."""
    await handler.start(
        HandlerContext(
            job=handler.name,
            group_id=handler.group_id,
            registry=registry,
            database=database,
            call=call,
        )
    )
