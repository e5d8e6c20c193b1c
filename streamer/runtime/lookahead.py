"""Deciding batch N+1 while batch N commits: a capability a handler opts into.

A handler with ``look_ahead = True`` has the next batch polled and decoded while the
current one is written and committed. What keeps the order:

- Offsets and writes still commit one batch at a time, in poll order: N+1's commit
  starts after N's ended, so per-partition (and so per-key) order is unchanged.
- ``decode`` writes nothing, so running it early changes no state. Its reads may
  predate N's commit: the handler's ``Decoded`` exposes them (``reads``: by kind, by
  key) and N's ``persist`` says what it wrote (``Output.writes``, same shape). Before
  ``plan(N+1)``, the runtime lays N's writes over N+1's reads when those began before N
  committed (``Overlay``), so a plan always starts from what is stored. The handler keeps
  no bookkeeping of its own.
- N+1's early decode is used only if N committed at its first attempt and the
  partitions this worker owns did not change meanwhile. Otherwise N+1 is filtered again
  to the partitions still owned and decoded afresh after N committed; an early decode
  that failed is dropped the same way (its error, if retriable, comes back when N+1 is
  decoded again).
- On a stop, N+1 is dropped uncommitted (its messages are redelivered).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

from streamer.runtime.handler import Batch, Output

__all__ = ["Ahead", "Decoded", "Overlay", "Reads"]

Reads = Mapping[str, MutableMapping[Any, Any]]


class Decoded(Protocol):
    """What a look-ahead handler's ``decode`` returns: its reads, by kind and key."""

    @property
    def reads(self) -> Reads: ...


@dataclass
class Decoding:
    """A decode and the number of commits before it began."""

    task: asyncio.Future[Any]
    commits_before: int


class Overlay:
    """The last committed batch's writes, laid over reads that began before it committed."""

    def __init__(self) -> None:
        self.commits = 0
        self._writes: Mapping[str, Mapping[Any, Any]] = {}

    def committed(self, output: Output) -> None:
        self.commits += 1
        self._writes = output.writes

    def lay_over(self, decoded: Any, commits_before: int) -> None:
        behind = self.commits - commits_before
        if behind == 0:
            return
        if behind > 1:
            raise RuntimeError(
                f"a batch decoded {behind} commits ago cannot be planned: "
                "the runtime decodes at most one batch ahead"
            )
        reads: Reads = decoded.reads
        for kind, written in self._writes.items():
            reads[kind].update(written)


@dataclass
class Ahead:
    """The next batch: polled, and being decoded, while the current one commits."""

    polled: asyncio.Future[Batch]
    generation: int  # the source's ownership generation when the poll started
    decoding: Decoding | None = None
    usable: bool = True  # False once the current batch's commit failed

    @classmethod
    def start(
        cls,
        poll: Callable[[], Awaitable[Batch]],
        decode: Callable[[Batch], Awaitable[Any]],
        *,
        generation: int,
        commits: int,
    ) -> Ahead:
        polled = asyncio.ensure_future(poll())

        async def decode_when_polled() -> Any:
            batch = await polled
            return await decode(batch) if batch.messages else None

        decoding = Decoding(asyncio.ensure_future(decode_when_polled()), commits)
        return cls(polled, generation, decoding)

    async def take(
        self, owns: Callable[[Any], bool], generation: int
    ) -> tuple[Batch, Decoding | None]:
        """The polled batch, with its early decode if that still holds; otherwise the batch
        filtered again to what this worker owns, to decode anew."""
        batch = await self.polled
        kept = batch.keep(owns)
        current = self.usable and self.generation == generation and kept is batch
        if current and self.decoding is not None:
            return batch, self.decoding
        await self.drop()
        return kept, None

    async def drop(self) -> None:
        """Forget the early decode (and its error, if it failed)."""
        if self.decoding is not None:
            self.decoding.task.cancel()
            await asyncio.gather(self.decoding.task, return_exceptions=True)
            self.decoding = None
        await asyncio.gather(self.polled, return_exceptions=True)
