"""The look-ahead without servers: batch N+1 is polled and decoded while N commits, planned
only after N committed (on N's writes), and decoded afresh when N's commit failed or was fenced.

The source, the checkpoint and the handler are small fakes that log what the runner asks
of them; a commit waits (bounded) until the next batch's decode has begun, so the overlap
is shown by the order of the log, never by timing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from streamer.runtime import tracing
from streamer.runtime.errors import DatabaseUnavailable, FencedError
from streamer.runtime.handler import Batch, HandlerBase, Output
from streamer.runtime.runner import Runner
from streamer.runtime.settings import DatabaseSettings, KafkaSettings, RuntimeSettings
from tests.unit.test_checkpoint import Msg

pytestmark = pytest.mark.unit

TOPIC = "in"


def msgs(*offsets: int, partition: int = 0) -> list[Msg]:
    return [Msg(b"k", o, partition) for o in offsets]


def name(batch: Batch) -> str:
    return "+".join(f"{m.partition()}:{m.offset()}" for m in batch.messages)


@dataclass
class Decoded:
    batch: Batch
    reads: dict[str, dict[str, Any]] = field(default_factory=lambda: {"last": {}})


class Recorder(HandlerBase):
    """A look-ahead handler: each batch reads the name of the last batch committed (as a
    job reads its stored state) and writes its own name."""

    topics = (TOPIC,)
    look_ahead = True

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.decoding: dict[str, asyncio.Event] = {}
        self.stored = "-"  # what the database holds: written at each commit
        self.planned_on: dict[str, str] = {}

    def started_decoding(self, batch_name: str) -> asyncio.Event:
        return self.decoding.setdefault(batch_name, asyncio.Event())

    async def decode(self, batch: Batch) -> Decoded:
        self.log.append(f"decode {name(batch)}")
        self.started_decoding(name(batch)).set()
        read = self.stored
        await asyncio.sleep(0)
        return Decoded(batch, {"last": {"name": read}})

    def plan(self, decoded: Decoded) -> Batch:
        self.log.append(f"plan {name(decoded.batch)}")
        self.planned_on[name(decoded.batch)] = decoded.reads["last"]["name"]
        return decoded.batch

    async def effects(self, plan: Batch) -> None:
        return None

    async def persist(self, tx: Any, plan: Batch, effects: None) -> Output:
        self.stored = name(plan)
        return Output(writes={"last": {"name": name(plan)}})

    def committed(self, plan: Batch, effects: None, output: Output) -> None:
        self.log.append(f"committed {name(plan)}")


class FakeSource:
    """Scripted polls; nothing is fetched while paused; stops the runner when out of polls."""

    def __init__(self, polls: list[list[Msg]]) -> None:
        self.polls = polls
        self.runner: Runner[Any, Any, Any] | None = None
        self.paused = False
        self.generation = 0
        self.epochs = {(TOPIC, 0): 1, (TOPIC, 1): 1}
        self.store: Any = None

    def attach(self, ctx: Any) -> None:
        return None

    async def start(self, topics: Any) -> None:
        return None

    async def close(self, timeout_s: float) -> None:
        return None

    async def poll(self, max_messages: int, wait_s: float) -> Batch:
        await asyncio.sleep(0)
        if self.paused:
            return Batch([])
        if not self.polls:
            assert self.runner is not None
            self.runner.stop()
            return Batch([])
        return Batch(self.polls.pop(0)).keep(self.owns)

    def owns(self, msg: Any) -> bool:
        return (msg.topic(), msg.partition()) in self.epochs

    def positions(self, batch: Batch) -> dict[Any, tuple[int, int]]:
        return {tp: (o, self.epochs[tp]) for tp, o in batch.next_offsets.items()}

    async def committed(self, batch: Batch) -> None:
        return None

    def fenced(self, partitions: Any) -> None:
        for tp in partitions:
            self.epochs.pop(tp, None)
        self.generation += 1

    async def pause(self, paused: bool) -> None:
        self.paused = paused

    async def idle(self, seconds: float) -> None:
        await asyncio.sleep(0)

    async def lag(self) -> dict[Any, int]:
        return {}

    def not_ready(self) -> list[str]:
        return []


class FakeCheckpoint:
    """Each commit waits until the next batch's decode began (if one is expected), then
    fails as scripted or runs the handler's persist."""

    def __init__(self, handler: Recorder, log: list[str], overlap: dict[str, str]) -> None:
        self.handler = handler
        self.log = log
        self.overlap = overlap  # batch -> the batch whose decode its commit waits for
        self.failures: dict[str, list[BaseException]] = {}
        self.timings: dict[str, float] = {}

    async def commit(self, offsets: Any, persist: Any) -> Output:
        this = name(persist.keywords["plan"])
        self.log.append(f"commit {this}")
        following = self.overlap.get(this)
        if following is not None:
            await asyncio.wait_for(self.handler.started_decoding(following).wait(), timeout=30)
        failures = self.failures.get(this)
        if failures:
            self.log.append(f"commit failed {this}")
            raise failures.pop(0)
        output: Output = await persist(None)
        self.log.append(f"commit done {this}")
        return output

    def forget(self) -> None:
        return None


def make_runner(
    polls: list[list[Msg]], overlap: dict[str, str]
) -> tuple[Runner[Any, Any, Any], list[str]]:
    log: list[str] = []
    handler = Recorder(log)
    source = FakeSource(polls)
    runner: Runner[Any, Any, Any] = Runner(
        handler,
        group_id="g",
        kafka=KafkaSettings(),
        database=DatabaseSettings(),
        runtime=RuntimeSettings(
            metrics_port=0,
            retry_max_attempts=1,
            retry_initial_backoff_ms=1,
            circuit_reset_timeout_s=0.01,
            lag_refresh_s=3600,
        ),
        source=source,  # type: ignore[arg-type]
        install_signal_handlers=False,
    )
    source.runner = runner
    runner.pipeline.checkpoint = FakeCheckpoint(handler, log, overlap)  # type: ignore[assignment]
    return runner, log


def before(log: list[str], first: str, second: str) -> bool:
    return log.index(first) < log.index(second)


async def test_the_next_batch_is_decoded_while_one_commits_and_planned_after() -> None:
    runner, log = make_runner([msgs(0, 1), msgs(2, 3), msgs(4)], {"0:0+0:1": "0:2+0:3"})
    await runner._loop()
    assert log.count("decode 0:2+0:3") == 1, log  # the early decode was used
    assert before(log, "commit 0:0+0:1", "decode 0:2+0:3")
    assert before(log, "decode 0:2+0:3", "commit done 0:0+0:1"), "decoded during the commit"
    assert before(log, "committed 0:0+0:1", "plan 0:2+0:3"), "planned only after N committed"
    assert [line for line in log if line.startswith("commit done")] == [
        "commit done 0:0+0:1",
        "commit done 0:2+0:3",
        "commit done 0:4",
    ]
    assert runner.stats.batches == 3 and runner.stats.messages == 5


async def test_the_batch_decoded_ahead_is_planned_on_what_the_previous_one_wrote() -> None:
    """Its read predates the previous commit; the runtime lays that commit's writes over it,
    so no job keeps look-ahead bookkeeping of its own."""
    runner, log = make_runner([msgs(0), msgs(1), msgs(2)], {"0:0": "0:1", "0:1": "0:2"})
    handler: Recorder = runner.handler  # type: ignore[assignment]
    await runner._loop()
    assert before(log, "decode 0:1", "commit done 0:0"), log  # read before 0:0 was stored
    assert handler.planned_on == {"0:0": "-", "0:1": "0:0", "0:2": "0:1"}


async def test_a_failed_commit_makes_the_next_batch_decode_again_after_it() -> None:
    runner, log = make_runner([msgs(0), msgs(1), msgs(2)], {"0:0": "0:1"})
    runner.pipeline.checkpoint.failures["0:0"] = [DatabaseUnavailable("down for a moment")]  # type: ignore[attr-defined]
    await runner._loop()
    assert log.count("commit failed 0:0") == 1
    assert log.count("decode 0:1") == 2, log  # the early one, dropped, then afresh
    second = [i for i, line in enumerate(log) if line == "decode 0:1"][1]
    assert second > log.index("committed 0:0"), "decoded again only after N committed"
    assert [line for line in log if line.startswith("committed")] == [
        "committed 0:0",
        "committed 0:1",
        "committed 0:2",
    ]


async def test_a_fenced_commit_drops_the_lost_partition_from_the_next_batch_too() -> None:
    runner, log = make_runner(
        [[*msgs(0), *msgs(0, partition=1)], [*msgs(1), *msgs(1, partition=1)]],
        {"0:0+1:0": "0:1+1:1"},
    )
    runner.pipeline.checkpoint.failures["0:0+1:0"] = [FencedError([(TOPIC, 1)])]  # type: ignore[attr-defined]
    await runner._loop()
    assert "commit failed 0:0+1:0" in log
    assert "committed 0:0" in log and "committed 0:1" in log, log
    assert not any(line.endswith("1:1") and line.startswith("plan") for line in log)
    assert before(log, "committed 0:0", "decode 0:1")  # decoded again, without partition 1
    assert runner.registry.get_sample_value("streamer_fenced_batches_total") == 1


class TracedRecorder(Recorder):
    """The Recorder, its decode a span named after its batch (as a job's state read)."""

    async def decode(self, batch: Batch) -> Decoded:
        with tracing.span(f"decode {name(batch)}"):
            return await super().decode(batch)


async def test_with_tracing_each_batch_is_one_span_and_its_early_decode_a_child_of_it() -> None:
    """The decode of batch N+1 runs while N commits, inside N's span: it belongs to N+1's
    all the same. A commit that failed and was tried again still ends one span, committed."""
    exporter = InMemorySpanExporter()
    assert tracing.configure("streamer-test", exporter=exporter, environ={}, instrument=False)
    try:
        runner, log = make_runner([msgs(0), msgs(1), msgs(2)], {"0:0": "0:1", "0:1": "0:2"})
        handler = TracedRecorder(log)
        runner.handler = runner.pipeline.handler = handler
        runner.pipeline.checkpoint.handler = handler  # type: ignore[attr-defined]
        runner.pipeline.checkpoint.failures["0:2"] = [DatabaseUnavailable("down for a moment")]  # type: ignore[attr-defined]
        await runner._loop()
    finally:
        tracing.shutdown()
    assert before(log, "decode 0:1", "commit done 0:0"), log  # 0:1 was decoded early
    spans = exporter.get_finished_spans()
    batches = [s for s in spans if s.name == "process job"]
    assert len(batches) == 3
    assert all(s.attributes and s.attributes["streamer.batch.committed"] for s in batches)
    batch_ids = {s.context.span_id for s in batches}
    decodes = {s.name: s for s in spans if s.name.startswith("decode ")}
    assert decodes.keys() == {"decode 0:0", "decode 0:1", "decode 0:2"}
    owners = {d.parent.span_id for d in decodes.values() if d.parent is not None}
    assert owners == batch_ids, "each decode a child of its own batch's span"


async def test_at_debug_each_committed_batch_says_when_it_committed_and_which_offsets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The record tools read (the benchmark's publish-to-commit latency): one per committed
    batch, its COMMIT's wall time and each partition's [first, next) offsets."""
    runner, _ = make_runner([msgs(0, 1), msgs(2, partition=1), msgs(3, 4, partition=1)], {})
    began = time.time()
    with caplog.at_level(logging.DEBUG, logger="streamer.runtime.pipeline"):
        await runner._loop()
    ended = time.time()
    records = [r for r in caplog.records if hasattr(r, "committed_at")]
    assert [r.batch_offsets for r in records] == [  # type: ignore[attr-defined]
        [(TOPIC, 0, 0, 2)],
        [(TOPIC, 1, 2, 3)],
        [(TOPIC, 1, 3, 5)],
    ]
    times = [r.committed_at for r in records]  # type: ignore[attr-defined]
    assert began <= times[0] <= times[1] <= times[2] <= ended
