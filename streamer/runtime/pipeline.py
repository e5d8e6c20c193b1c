"""The life of one batch, top to bottom: decode, plan, effects, commit, acknowledge.

``Pipeline.run`` takes a polled batch through the handler's steps and the checkpoint:

1. decode it (or take the decode that ran while the previous batch committed);
2. plan it: for a look-ahead handler, first lay the previous batch's writes over the
   reads of a decode that began before that batch committed (``lookahead.Overlay``);
3. run the plan's effects (deliveries, copies: idempotent, they may run again);
4. commit through the checkpoint: fenced offsets, ``persist``, the outputs published and
   acknowledged, COMMIT, retried with backoff on PostgreSQL's circuit breaker; meanwhile
   the next batch is polled and, for a look-ahead handler, decoded;
5. tell the source (Kafka hears of the offsets, a queue deletes the messages), then the
   handler (``committed``), the metrics and the log.

While tracing is on, a batch has a span from its poll to the end of ``run`` (a root,
linked to its events' traces: ``tracing.begin_batch``), current while its steps run, an
early decode's included: the handler's spans (state read, look-ups, deliveries, copies)
and the checkpoint's ``commit`` are its children.

What the batch meets on the way, and what happens then:

- ``StateChanged`` (another writer committed to what the batch read): decoded and
  planned again, at once.
- ``FencedError`` (another worker claimed a partition): the batch goes on without that
  partition's messages, decoded and planned again.
- ``DependencyUnavailable`` (a dependency down, after the call's own retries, or its
  circuit open): the source is paused (a group member keeps polling, so it keeps its
  place) until the error's retry-after or the breaker's reset timeout, then the failed
  step is tried again; what came before it is kept (the plan, the effects), unless a
  rebalance took some of the batch's partitions meanwhile. A stop during the wait gives
  the batch up uncommitted (its messages are consumed again).
- Any other error stops the worker: a bug, or a misconfiguration named as one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

from streamer.errors import DependencyUnavailable
from streamer.runtime import tracing
from streamer.runtime.checkpoint import Checkpoint
from streamer.runtime.errors import FencedError, StateChanged
from streamer.runtime.handler import Batch, Call, Handler, Output
from streamer.runtime.logs import log_fields
from streamer.runtime.lookahead import Ahead, Decoding, Overlay
from streamer.runtime.metrics import RuntimeMetrics
from streamer.runtime.source import Source

__all__ = ["Pipeline", "RunnerStats"]

log = logging.getLogger(__name__)

D = TypeVar("D")
P = TypeVar("P")
E = TypeVar("E")
_UNSET: Any = object()


@dataclass
class RunnerStats:
    """What a worker did, for the line it logs when it stops."""

    batches: int = 0
    messages: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)
    rebalances: int = 0


class Pipeline(Generic[D, P, E]):
    def __init__(
        self,
        handler: Handler[D, P, E],
        source: Source,
        checkpoint: Checkpoint,
        *,
        call: Call,
        metrics: RuntimeMetrics,
        stats: RunnerStats,
        stopping: asyncio.Event,
        outage_wait_s: float,
        poll: Callable[[], Awaitable[Batch]],
        group_id: str = "",
        messaging_system: str = "kafka",
    ) -> None:
        self.handler = handler
        self.source = source
        self.checkpoint = checkpoint
        self.call = call
        self.metrics = metrics
        self.stats = stats
        self.stopping = stopping
        self.outage_wait_s = outage_wait_s
        self.poll = poll
        self.group_id = group_id
        self.messaging_system = messaging_system
        self.overlay = Overlay()

    def _traced(self, batch: Batch) -> Batch:
        """``batch`` with its span begun, once (a no-op while tracing is off)."""
        return tracing.begin_batch(
            batch, job=self.handler.name, group=self.group_id, system=self.messaging_system
        )

    async def _poll_ahead(self) -> Batch:
        return self._traced(await self.poll())

    async def _decode_ahead(self, batch: Batch) -> Any:
        with tracing.activate(batch):
            return await self.handler.decode(batch)

    async def run(
        self, batch: Batch, early: Decoding | None = None, waited_s: float = 0.0
    ) -> Ahead | None:
        """Apply one batch (see the module docstring); gives up only on a stop. Returns the
        next batch if it was polled (and is being decoded) while this one committed."""
        batch = self._traced(batch)
        with tracing.batch_scope(batch):
            return await self._run(batch, early, waited_s)

    async def _run(self, batch: Batch, early: Decoding | None, waited_s: float) -> Ahead | None:
        handler, source = self.handler, self.source
        clock = time.perf_counter
        started = clock()
        timings: dict[str, float] = {"poll": waited_s}
        for topic, n in Counter(m.topic() or "" for m in batch.messages).items():
            self.metrics.messages_consumed.labels(topic).inc(n)
        decoded: Any = _UNSET
        plan: Any = _UNSET
        effects: Any = _UNSET
        commits_before = self.overlay.commits
        outage_since: float | None = None
        ahead: Ahead | None = None
        try:
            while batch.messages:
                try:
                    step = clock()
                    if decoded is _UNSET:  # 1
                        if early is not None:
                            decoding, early = early, None
                            commits_before = decoding.commits_before
                            decoded = await decoding.task
                        else:
                            commits_before = self.overlay.commits
                            decoded = await handler.decode(batch)
                    timings["decode"] = clock() - step
                    step = clock()
                    if plan is _UNSET:  # 2
                        if handler.look_ahead:
                            self.overlay.lay_over(decoded, commits_before)
                        plan = handler.plan(decoded)
                    timings["plan"] = clock() - step
                    step = clock()
                    if effects is _UNSET:  # 3
                        effects = await handler.effects(plan)
                    timings["effects"] = clock() - step
                    persist = partial(handler.persist, plan=plan, effects=effects)
                    commit = partial(self.checkpoint.commit, source.positions(batch), persist)
                    committing = asyncio.ensure_future(self.call("postgres", commit))  # 4
                    if ahead is None and self._may_look_ahead():
                        ahead = Ahead.start(
                            self._poll_ahead,
                            self._decode_ahead,
                            generation=source.generation,
                            commits=self.overlay.commits,
                        )
                    output: Output = await committing
                    committed_at = time.time()
                except StateChanged as exc:
                    self.metrics.replanned.inc()
                    log.info("batch planned on stale state, planning it again: %s", exc)
                    decoded = plan = effects = _UNSET
                    batch, ahead = batch.keep(source.owns), _unusable(ahead)
                    continue
                except FencedError as exc:
                    self.metrics.fenced.inc()
                    log.warning("batch fenced, dropping partitions we no longer own: %s", exc)
                    source.fenced(exc.partitions)
                    decoded = plan = effects = _UNSET
                    batch, ahead = batch.keep(source.owns), _unusable(ahead)
                    continue
                except DependencyUnavailable as exc:
                    ahead = _unusable(ahead)
                    if outage_since is None:
                        outage_since = time.monotonic()
                        log.warning("dependency unavailable, pausing: %s", exc)
                        await source.pause(True)
                    if self.stopping.is_set():
                        log.warning("stopping during an outage: the batch in hand is given up")
                        self.checkpoint.forget()
                        return ahead
                    await source.idle(exc.retry_after_s or self.outage_wait_s)
                    kept = batch.keep(source.owns)
                    if kept is not batch:  # a rebalance took partitions meanwhile
                        decoded = plan = effects = _UNSET
                    batch = kept
                    continue
                if outage_since is not None:
                    log.info(
                        "dependency back after %.1fs, resuming", time.monotonic() - outage_since
                    )
                # 5: the handler and the metrics first (what committed is visible in the
                # database from now on), then the source
                self._committed(batch, plan, effects, output, clock() - started, committed_at)
                step = clock()
                await source.committed(batch)
                timings["acknowledge"] = clock() - step
                if log.isEnabledFor(logging.DEBUG):
                    self._log_timings(batch, timings, committed_at)
                break
            else:
                self.checkpoint.forget()  # every message's partition was taken away
        except BaseException:
            if ahead is not None:
                await ahead.drop()
            raise
        finally:
            if early is not None:
                early.task.cancel()
                await asyncio.gather(early.task, return_exceptions=True)
        if source.paused:
            await source.pause(False)
        return ahead

    def _may_look_ahead(self) -> bool:
        return self.handler.look_ahead and not self.stopping.is_set() and not self.source.paused

    def _committed(
        self,
        batch: Batch,
        plan: P,
        effects: E,
        output: Output,
        elapsed_s: float,
        committed_at: float,
    ) -> None:
        self.overlay.committed(output)
        self.handler.committed(plan, effects, output)
        tracing.batch_committed(batch, output)
        self.stats.batches += 1
        self.stats.messages += len(batch)
        self.stats.counts.update(output.counts)
        fields = log_fields()
        for letter in output.letters:
            self.stats.dead_letters[letter.reason] += 1
            self.metrics.dead_letters.labels(letter.reason).inc()
            log.info(
                "dead-lettered: %s",
                letter.message,
                extra={
                    "topic": letter.topic,
                    "partition": letter.partition,
                    "offset": letter.offset,
                    "key": letter.key.decode("utf-8", "replace") if letter.key else None,
                    "reason": letter.reason,
                    **{k: v for k, v in letter.details if k in fields},
                },
            )
        spent = self.checkpoint.timings
        self.metrics.db_write_latency.observe(
            spent.get("offsets", 0.0) + spent.get("write", 0.0) + spent.get("commit", 0.0)
        )
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batch_duration.observe(elapsed_s)
        self.metrics.last_commit.set(committed_at)

    def _log_timings(self, batch: Batch, timings: dict[str, float], committed_at: float) -> None:
        """Where a batch's time went, at debug level: what the loop waited for the poll, the
        handler's steps, the checkpoint's (offsets, write, publish, COMMIT) and the source's
        acknowledgment. "decode" of a batch decoded early is the part still waited for.

        The record also carries, for tools that hold events against their commit (the
        benchmark's publish-to-commit latency): ``committed_at``, the Unix time at which
        PostgreSQL's COMMIT returned, and ``batch_offsets``, each partition's
        ``(topic, partition, first offset, next offset)`` in the batch."""
        steps = {**timings, **self.checkpoint.timings}
        order = ("poll", "decode", "plan", "effects", "offsets", "write", "publish", "commit")
        shown = ", ".join(
            f"{name} {1000 * steps[name]:.1f} ms"
            for name in (*order, "acknowledge")
            if name in steps
        )
        log.debug(
            "batch of %d messages over %d partitions: %s",
            len(batch),
            len(batch.partitions),
            shown,
            extra={
                "committed_at": committed_at,
                "batch_offsets": [
                    (t, p, msgs[0].offset() or 0, (msgs[-1].offset() or 0) + 1)
                    for (t, p), msgs in batch.partitions.items()
                ],
            },
        )


def _unusable(ahead: Ahead | None) -> Ahead | None:
    if ahead is not None:
        ahead.usable = False
    return ahead
