"""What a job gives the runtime, and what crosses between them.

A job is a handler: the topics it reads, the dependencies it calls (each gets a circuit
breaker; PostgreSQL and Kafka are the runtime's own), and its steps. The runtime does the
rest: group membership and partition ownership, the commit order, retries, pauses, dead
letters, draining, health and metrics. The steps, in the order the runtime calls them for
each batch (``streamer.runtime.pipeline`` reads top to bottom the same way):

1. ``decode(batch)``: read the messages and whatever the job's state says about them
   (reads only: no write, no call with an effect outside). What cannot be read becomes a
   dead letter in the plan, never an exception. May run more than once for a batch (the
   batch is decoded again after a rebalance, or when ``StateChanged`` says its reads
   went stale). A handler with ``look_ahead`` has ``decode(N+1)`` run while batch N
   commits: its ``Decoded`` then exposes ``reads`` and its ``persist`` returns ``writes``,
   and the runtime lays N's writes over N+1's reads before ``plan`` (``lookahead.py``).
2. ``plan(decoded)``: pure and synchronous: what the batch will do, derived from the
   decoded messages and reads. The plan is never changed afterwards: every later step
   reads it, and a retry reuses it.
3. ``effects(plan)``: calls to the outside world that must happen before the commit
   (an HTTP delivery, an object copy). They run again when the batch is retried or
   redelivered, so each must be idempotent; the job states its rule (a stable
   ``webhook-id``; a copy skipped when the destination holds the bytes). Returns what
   happened, for ``persist``.
4. ``persist(tx, plan, effects)``: inside the checkpoint's transaction, after the
   fenced offsets: the job's writes; returns the ``Output`` (dead letters, messages to
   publish before the commit, counts). May run more than once (the transaction is rolled
   back and tried again), so it changes neither the plan nor the effects.
5. ``committed(plan, effects, output)``: after the commit, for metrics and caches.

``assigned`` and ``revoked`` are called on the event loop when the worker gains or loses
partitions: revoked ones before any later batch is handed over, assigned ones before
their first message. Background work (the replicator's deletes) is started through
``ctx.spawn``: the runtime supervises it and stops it with the worker.

Errors: a ``DependencyUnavailable`` from any step makes the runtime retry, pausing the
partitions while the dependency's circuit is open; ``StateChanged`` makes it decode and
plan again; any other error stops the worker (a bug, or a ``ConfigError``). Problems of
single messages are dead letters in the ``Output``, never exceptions.

``start(ctx)`` is where a job checks its own dependencies (its buckets, say) with the
clients and credentials it will use, after the runtime checked the broker and
PostgreSQL: a ``ConfigError`` there ends the worker before it joins its group.
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
    "Call",
    "Handler",
    "HandlerBase",
    "HandlerContext",
    "Output",
    "OutputMessage",
    "SimpleHandler",
    "TopicPartition",
]

D = TypeVar("D")
P = TypeVar("P")
E = TypeVar("E")
TopicPartition = tuple[str, int]
T = TypeVar("T")


class Call(Protocol):
    """Calls ``fn`` with retries and the named dependency's circuit breaker."""

    def __call__(self, dependency: str, fn: Callable[[], Awaitable[T]], /) -> Awaitable[T]: ...


@dataclass(frozen=True)
class Batch:
    """Messages of one poll, all of partitions this worker owns.

    ``messages`` keeps the poll's order, in which each partition's messages come in offset
    order (a job folding a key across two topics reads them here, together);
    ``partitions`` gives each partition's messages on their own.
    """

    messages: Sequence[Message]
    # Its span while tracing is on (``tracing.begin_batch``), kept by ``keep``.
    trace: Any = field(default=None, compare=False, repr=False)

    @cached_property
    def partitions(self) -> dict[TopicPartition, list[Message]]:
        out: dict[TopicPartition, list[Message]] = {}
        for msg in self.messages:
            out.setdefault((msg.topic() or "", msg.partition() or 0), []).append(msg)
        return out

    @cached_property
    def next_offsets(self) -> dict[TopicPartition, int]:
        """The offset after each partition's last message: where the commit moves it."""
        return {tp: (msgs[-1].offset() or 0) + 1 for tp, msgs in self.partitions.items()}

    def keep(self, wanted: Callable[[Message], bool]) -> Batch:
        kept = [m for m in self.messages if wanted(m)]
        return self if len(kept) == len(self.messages) else Batch(kept, self.trace)

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
    """What ``persist`` returns: published before the commit, then handed to ``committed``.

    ``writes``: what the batch wrote, by kind and key, for a look-ahead handler (laid over
    the reads of the batch decoded while this one committed). ``detail``: the job's own
    account of the batch, for its ``committed``.
    """

    letters: list[DeadLetter] = field(default_factory=list)
    messages: list[OutputMessage] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    writes: Mapping[str, Mapping[Any, Any]] = field(default_factory=dict)
    detail: Any = None


@dataclass(frozen=True)
class HandlerContext:
    """What the runtime lends a handler when it starts."""

    job: str
    group_id: str
    registry: CollectorRegistry
    database: Database
    call: Call
    # Starts a background task the runtime supervises: it is cancelled when the worker
    # stops, and an error it dies of stops the worker.
    spawn: Callable[[str, Callable[[], Awaitable[None]]], None]

    def dead_letter(
        self, msg: Message, error: BaseException, *, details: Mapping[str, str] | None = None
    ) -> DeadLetter:
        letter = DeadLetter.from_error(
            msg, error, group_id=self.group_id, job=self.job, details=dict(details or {})
        )
        return tracing.traced_letter(letter, msg)


class Handler(Protocol[D, P, E]):
    """D: what ``decode`` finds; P: the plan; E: what ``effects`` did."""

    @property
    def name(self) -> str:
        """The job's name, in logs and in dead letters' ``job`` header."""
        ...

    @property
    def topics(self) -> Sequence[str]: ...

    @property
    def dependencies(self) -> Sequence[str]:
        """What the job calls besides PostgreSQL and Kafka; each gets a circuit breaker."""
        ...

    @property
    def look_ahead(self) -> bool:
        """Whether ``decode`` may run while the previous batch commits (see the module)."""
        ...

    async def start(self, ctx: HandlerContext) -> None: ...

    async def stop(self) -> None: ...

    def assigned(self, partitions: Sequence[TopicPartition]) -> None: ...

    def revoked(self, partitions: Sequence[TopicPartition]) -> None: ...

    async def decode(self, batch: Batch) -> D: ...

    def plan(self, decoded: D) -> P: ...

    async def effects(self, plan: P) -> E: ...

    async def persist(self, tx: Transaction, plan: P, effects: E) -> Output: ...

    def committed(self, plan: P, effects: E, output: Output) -> None: ...

    def not_ready(self) -> list[str]: ...


class HandlerBase:
    """Defaults for what most handlers leave alone: the lifecycle, the rebalance hooks,
    readiness, no look-ahead, no dependencies of their own."""

    name: str = "job"
    topics: Sequence[str] = ()
    dependencies: Sequence[str] = ()
    look_ahead: bool = False
    ctx: HandlerContext

    async def start(self, ctx: HandlerContext) -> None:
        self.ctx = ctx

    async def stop(self) -> None:
        return None

    def assigned(self, partitions: Sequence[TopicPartition]) -> None:
        return None

    def revoked(self, partitions: Sequence[TopicPartition]) -> None:
        return None

    def not_ready(self) -> list[str]:
        """Why the job cannot work now, for ``/readyz`` (e.g. deliveries disabled)."""
        return []


class SimpleHandler(HandlerBase, Generic[D]):
    """Defaults for the optional steps too, so a small handler writes only what it does:
    ``decode`` and ``persist``, with the decoded batch as its own plan and no effects."""

    def plan(self, decoded: D) -> D:
        return decoded

    async def effects(self, plan: D) -> None:
        return None

    def committed(self, plan: D, effects: None, output: Output) -> None:
        return None
