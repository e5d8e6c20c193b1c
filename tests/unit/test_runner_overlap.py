"""The runner's overlap without servers: batch N+1 is polled and prepared while N commits,
planned only after N committed, and prepared afresh when N's commit failed or was fenced.

The consumer, the checkpoint and the handler are small fakes that log what the runner
asks of them; a commit waits (bounded) until the next batch's preparation has begun,
so the overlap is shown by the order of the log, never by timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from streamer.runtime.errors import DatabaseUnavailable, FencedError
from streamer.runtime.handler import Batch, Output, SimpleHandler
from streamer.runtime.runner import Runner
from streamer.runtime.settings import DatabaseSettings, KafkaSettings, RuntimeSettings
from tests.unit.test_checkpoint import Msg

pytestmark = pytest.mark.unit

TOPIC = "in"


def msgs(*offsets: int, partition: int = 0) -> list[Msg]:
    return [Msg(b"k", o, partition) for o in offsets]


def name(batch: Batch) -> str:
    return "+".join(f"{m.partition()}:{m.offset()}" for m in batch.messages)


class Recorder(SimpleHandler[Batch]):
    topics = (TOPIC,)

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.preparing: dict[str, asyncio.Event] = {}

    def started_preparing(self, batch_name: str) -> asyncio.Event:
        return self.preparing.setdefault(batch_name, asyncio.Event())

    async def prepare(self, batch: Batch) -> Batch:
        self.log.append(f"prepare {name(batch)}")
        self.started_preparing(name(batch)).set()
        await asyncio.sleep(0)
        return batch

    async def plan(self, prepared: Batch) -> Batch:
        self.log.append(f"plan {name(prepared)}")
        return prepared

    async def write(self, tx: Any, plan: Batch) -> Output:
        return Output()

    def committed(self, plan: Batch, output: Output) -> None:
        self.log.append(f"committed {name(plan)}")


class FakeConsumer:
    """Scripted polls; nothing is fetched while paused; stops the runner when out of polls."""

    def __init__(self, polls: list[list[Msg]], runner: Runner[Any]) -> None:
        self.polls = polls
        self.runner = runner
        self.paused = False
        self.started = True

    async def consume(self, count: int, timeout_s: float) -> list[Msg]:
        await asyncio.sleep(0)
        if self.paused:
            return []
        if not self.polls:
            self.runner.stop()
            return []
        return self.polls.pop(0)

    async def set_paused(self, partitions: Any, paused: bool) -> None:
        self.paused = paused

    async def seek_back(self, messages: Sequence[Msg]) -> None:
        return None

    async def mirror_commit(self, offsets: Any) -> None:
        return None

    async def lag(self, partitions: Any, floors: Any) -> dict[Any, int]:
        return {}


class FakeCheckpoint:
    """Each commit waits until the next batch's preparation began (if one is expected),
    then fails as scripted or calls the handler's write."""

    def __init__(self, handler: Recorder, log: list[str], overlap: dict[str, str]) -> None:
        self.handler = handler
        self.log = log
        self.overlap = overlap  # batch -> the batch whose preparation its commit waits for
        self.failures: dict[str, list[BaseException]] = {}

    async def commit(self, batch: Batch, epochs: Any, handler: Any, plan: Batch) -> Output:
        this = name(batch)
        self.log.append(f"commit {this}")
        following = self.overlap.get(this)
        if following is not None:
            await asyncio.wait_for(self.handler.started_preparing(following).wait(), timeout=30)
        failures = self.failures.get(this)
        if failures:
            self.log.append(f"commit failed {this}")
            raise failures.pop(0)
        output = await handler.write(None, plan)
        self.log.append(f"commit done {this}")
        return output


def make_runner(polls: list[list[Msg]], overlap: dict[str, str]) -> tuple[Runner[Any], list[str]]:
    log: list[str] = []
    handler = Recorder(log)
    runner: Runner[Any] = Runner(
        handler,
        kafka=KafkaSettings(),
        database=DatabaseSettings(),
        runtime=RuntimeSettings(
            metrics_port=0,
            retry_max_attempts=1,
            retry_initial_backoff_ms=1,
            circuit_reset_timeout_s=0.01,
            lag_refresh_s=3600,
        ),
        install_signal_handlers=False,
    )
    runner.consumer = FakeConsumer(polls, runner)  # type: ignore[assignment]
    runner.checkpoint = FakeCheckpoint(handler, log, overlap)  # type: ignore[assignment]
    for partition in (0, 1):
        runner.partitions.epochs[(TOPIC, partition)] = 1
        runner.partitions.floors[(TOPIC, partition)] = 0
    return runner, log


def before(log: list[str], first: str, second: str) -> bool:
    return log.index(first) < log.index(second)


async def test_the_next_batch_is_prepared_while_one_commits_and_planned_after() -> None:
    runner, log = make_runner([msgs(0, 1), msgs(2, 3), msgs(4)], {"0:0+0:1": "0:2+0:3"})
    await runner._consume_loop()
    assert log.count("prepare 0:2+0:3") == 1, log  # the early preparation was used
    assert before(log, "commit 0:0+0:1", "prepare 0:2+0:3")
    assert before(log, "prepare 0:2+0:3", "commit done 0:0+0:1"), "prepared during the commit"
    assert before(log, "committed 0:0+0:1", "plan 0:2+0:3"), "planned only after N committed"
    assert [line for line in log if line.startswith("commit done")] == [
        "commit done 0:0+0:1",
        "commit done 0:2+0:3",
        "commit done 0:4",
    ]
    assert runner.stats.batches == 3 and runner.stats.messages == 5


async def test_a_failed_commit_makes_the_next_batch_prepare_again_after_it() -> None:
    runner, log = make_runner([msgs(0), msgs(1), msgs(2)], {"0:0": "0:1"})
    runner.checkpoint.failures["0:0"] = [DatabaseUnavailable("down for a moment")]  # type: ignore[attr-defined]
    await runner._consume_loop()
    assert log.count("commit failed 0:0") == 1
    assert log.count("prepare 0:1") == 2, log  # the early one, dropped, then afresh
    second = [i for i, line in enumerate(log) if line == "prepare 0:1"][1]
    assert second > log.index("committed 0:0"), "prepared again only after N committed"
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
    runner.checkpoint.failures["0:0+1:0"] = [FencedError([(TOPIC, 1)])]  # type: ignore[attr-defined]
    await runner._consume_loop()
    assert "commit failed 0:0+1:0" in log
    assert "committed 0:0" in log and "committed 0:1" in log, log
    assert not any(line.endswith("1:1") and line.startswith("plan") for line in log)
    assert before(log, "committed 0:0", "prepare 0:1")  # prepared again, without partition 1
    assert runner.stats.fenced_batches == 1
