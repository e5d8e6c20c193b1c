"""The runtime carries a job that is not the gallery: a handler of a few dozen lines that
counts messages per key into a table gets fenced offsets, dead letters and pauses for free.

The handler's one outside dependency ("ledger") is a switch in this test: it stands for
any service a job calls, and lets the test take it away and bring it back.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from streamer.contract.errors import InvalidEvent
from streamer.errors import DependencyUnavailable
from streamer.runtime.checkpoint import Transaction
from streamer.runtime.handler import Batch, Output, SimpleHandler
from streamer.runtime.metrics import new_registry
from streamer.runtime.runner import Runner
from streamer.settings import Settings
from tests.integration.support import (
    Sender,
    dead_letters,
    fetch,
    prepare,
    stored_offsets,
    wait_for,
)

pytestmark = pytest.mark.integration


class LedgerDown(DependencyUnavailable):
    dependency = "ledger"


class CountPerKey(SimpleHandler[Batch]):
    """The whole job: count messages per key; a message without a key is dead-lettered."""

    name = "counter"
    dependencies = ("ledger",)

    def __init__(self, group_id: str, topic: str, *, ledger_up: asyncio.Event) -> None:
        self.group_id = group_id  # not the handler's business: the runner is given it below
        self.topics = (topic,)
        self.ledger_up = ledger_up
        self.gate: asyncio.Event | None = None  # when set, the next batch waits here
        self.waiting = asyncio.Event()

    async def _ledger(self) -> None:
        if not self.ledger_up.is_set():
            raise LedgerDown("ledger unreachable")

    async def decode(self, batch: Batch) -> Batch:
        await self.ctx.call("ledger", self._ledger)
        if self.gate is not None:
            self.waiting.set()
            await self.gate.wait()
        return batch

    async def persist(self, tx: Transaction, plan: Batch, effects: None) -> Output:
        output = Output()
        counts: Counter[str] = Counter()
        for msg in plan.messages:
            if msg.key():
                counts[msg.key().decode()] += 1
            else:
                output.letters.append(
                    self.ctx.dead_letter(msg, InvalidEvent("no key", reason="no_key"))
                )
        await tx.conn.execute(
            "INSERT INTO counts (key, n) SELECT * FROM unnest($1::text[], $2::int[])"
            " ON CONFLICT (key) DO UPDATE SET n = counts.n + EXCLUDED.n",
            list(counts),
            list(counts.values()),
        )
        return output


def runner(settings: Settings, handler: CountPerKey, **runtime: Any) -> Runner[Any, Any, Any]:
    return Runner(
        handler,
        group_id=handler.group_id,
        kafka=settings.kafka,
        database=settings.database,
        runtime=settings.runtime.model_copy(update=runtime),
        registry=new_registry(),
        install_signal_handlers=False,
    )


def setup(make_settings: Any, **overrides: Any) -> tuple[Settings, Sender]:
    settings = make_settings(topic_partitions=1, **overrides)
    prepare(settings)
    from tests.conftest import run_sync

    async def table() -> None:
        await fetch(settings, "CREATE TABLE counts (key text PRIMARY KEY, n int NOT NULL)")

    run_sync(table())
    return settings, Sender(settings)


def send(sender: Sender, settings: Settings, keys: list[bytes | None]) -> None:
    for i, key in enumerate(keys):
        sender.raw(settings.topics.media_topic, key, f"m{i}".encode())
    sender.flush()


async def counts(settings: Settings) -> dict[str, int]:
    return {r["key"]: r["n"] for r in await fetch(settings, "SELECT key, n FROM counts")}


async def drained(settings: Settings, group_id: str, ends: dict[tuple[str, int], int]) -> bool:
    stored = await stored_offsets(settings.replace(group_id=group_id))
    return all(stored.get(tp, -1) >= end for tp, end in ends.items())


async def test_counts_every_message_once_and_dead_letters_what_it_refuses(make_settings) -> None:
    settings, sender = setup(make_settings)
    keys = [b"a", b"b", None, b"a", b"c", None, b"a"] * 20
    send(sender, settings, keys)
    up = asyncio.Event()
    up.set()
    handler = CountPerKey("counter-g", settings.topics.media_topic, ledger_up=up)
    worker = runner(settings, handler)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await wait_for(
            lambda: drained(settings, "counter-g", sender.ends), timeout_s=60, what="drain"
        )
    finally:
        stop.set()
        await task
    assert await counts(settings) == {"a": 60, "b": 20, "c": 20}
    letters = dead_letters(settings)
    assert len(letters) == 40
    assert {(r.reason, r.job, r.group_id) for r in letters} == {("no_key", "counter", "counter-g")}
    assert (
        worker.registry.get_sample_value("streamer_dead_letters_total", {"reason": "no_key"}) == 40
    )


async def test_an_outage_of_its_dependency_pauses_it_and_loses_nothing(make_settings) -> None:
    settings, sender = setup(make_settings)
    up = asyncio.Event()
    up.set()
    handler = CountPerKey("counter-p", settings.topics.media_topic, ledger_up=up)
    worker = runner(settings, handler, circuit_reset_timeout_s=0.3, retry_max_attempts=2)
    get = worker.registry.get_sample_value
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        send(sender, settings, [b"k"] * 10)
        await wait_for(lambda: drained(settings, "counter-p", sender.ends), timeout_s=60, what="1")
        up.clear()
        send(sender, settings, [b"k"] * 10)

        async def paused() -> bool:
            return (get("streamer_circuit_state", {"dependency": "ledger"}) == 2) and (
                get("streamer_paused_partitions") == 1
            )

        await wait_for(paused, timeout_s=30, what="the ledger circuit to open and pause")
        assert await counts(settings) == {"k": 10}
        assert worker.readiness().reasons == ("circuit ledger open: ledger unreachable",)
        up.set()
        await wait_for(lambda: drained(settings, "counter-p", sender.ends), timeout_s=60, what="2")
        assert get("streamer_paused_partitions") == 0
    finally:
        stop.set()
        await task
    assert await counts(settings) == {"k": 20}
    assert dead_letters(settings) == []
    assert get("streamer_circuit_state", {"dependency": "ledger"}) == 0


async def test_a_worker_that_lost_its_partition_cannot_commit_for_it(make_settings) -> None:
    """A stalls inside a batch until B has claimed the partition; A's commit is then fenced."""
    settings, sender = setup(make_settings, max_poll_interval_ms=6000)
    up = asyncio.Event()
    up.set()
    a_handler = CountPerKey("counter-f", settings.topics.media_topic, ledger_up=up)
    a_handler.gate = asyncio.Event()
    a = runner(settings, a_handler)
    b = runner(settings, CountPerKey("counter-f", settings.topics.media_topic, ledger_up=up))
    stops = [asyncio.Event(), asyncio.Event()]
    tasks = [asyncio.create_task(a.run(stops[0]))]
    try:
        send(sender, settings, [b"x"] * 30)
        await asyncio.wait_for(a_handler.waiting.wait(), timeout=60)
        tasks.append(asyncio.create_task(b.run(stops[1])))

        async def b_owns() -> bool:
            rows = await fetch(
                settings, "SELECT owner FROM consumer_offsets WHERE group_id = 'counter-f'"
            )
            return [r["owner"] for r in rows] == [b.owner]

        await wait_for(b_owns, timeout_s=60, what="B to claim the partition")
        a_handler.gate.set()
        await wait_for(lambda: drained(settings, "counter-f", sender.ends), timeout_s=60, what="B")
        fenced = a.registry.get_sample_value
        await wait_for(
            lambda: asyncio.sleep(0, result=fenced("streamer_fenced_batches_total") == 1),
            timeout_s=30,
            what="fence",
        )
    finally:
        for stop in stops:
            stop.set()
        await asyncio.gather(*tasks)
    assert await counts(settings) == {"x": 30}, "A's fenced batch landed nothing"
    assert a.registry.get_sample_value("streamer_fenced_batches_total") == 1


async def test_a_stop_is_bounded_even_when_the_batch_in_hand_cannot_finish(make_settings) -> None:
    settings, sender = setup(make_settings)
    up = asyncio.Event()
    up.set()
    stuck = CountPerKey("counter-s", settings.topics.media_topic, ledger_up=up)
    stuck.gate = asyncio.Event()  # never set: the batch can never finish
    worker = runner(settings, stuck, shutdown_grace_s=3.0)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    send(sender, settings, [b"x"] * 5)
    await asyncio.wait_for(stuck.waiting.wait(), timeout=60)
    stop.set()
    stats = await asyncio.wait_for(task, timeout=30)  # the batch in hand given up, not waited for
    assert stats.batches == 0
    assert await counts(settings) == {}
    stored = await stored_offsets(settings.replace(group_id="counter-s"))
    assert all(offset <= 0 for offset in stored.values()), "nothing committed past the batch"


async def test_a_partition_paused_when_revoked_is_fetched_again_when_it_comes_back(
    make_settings,
) -> None:
    """Found by the chaos campaign: librdkafka keeps a partition's pause across a revoke, so a
    worker that paused for an outage and then got the partition back never fetched it."""
    from streamer.runtime.kafka import ConsumerThread
    from streamer.runtime.kafka_source import KafkaSource

    settings = make_settings(topic_partitions=2)
    prepare(settings)
    topic = settings.topics.media_topic

    class Listener:
        def on_assign(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
            return dict.fromkeys(partitions, 0)

        def on_revoke(self, partitions: list[tuple[str, int]], kind: str) -> None:
            owned.difference_update(partitions)

    owned: set[tuple[str, int]] = set()
    config = KafkaSource(settings.kafka, "pause-g", claim_timeout_s=5).config("pause-test")
    ours = ConsumerThread(config, Listener())
    other = ConsumerThread(config, Listener())
    sender = Sender(settings)
    seen: dict[str, set[int]] = {"ours": set(), "other": set()}

    async def poll(name: str, consumer: ConsumerThread) -> None:
        while True:  # like the runner: keep polling, paused or not, to stay in the group
            seen[name] |= {m.partition() for m in await consumer.consume(100, 0.1)}

    async def until(condition: Any, what: str) -> None:
        await wait_for(
            lambda: asyncio.sleep(0, result=condition()), timeout_s=60, what=f"{what}: {seen}"
        )

    pollers: list[asyncio.Task[None]] = []
    try:
        await ours.start([topic])
        pollers.append(asyncio.create_task(poll("ours", ours)))
        send(sender, settings, [f"k{i}".encode() for i in range(40)])
        await until(lambda: seen["ours"] == {0, 1}, "the first messages")
        await ours.set_paused([(topic, 0), (topic, 1)], True)  # an outage: everything paused
        await other.start([topic])  # a member joins: one partition moves away while paused
        pollers.append(asyncio.create_task(poll("other", other)))
        await until(lambda: len(seen["other"]) == 1, "the other member's partition")
        await ours.set_paused([(topic, p) for p in {0, 1} - seen["other"]], False)  # outage over
        pollers.pop().cancel()
        await other.close(timeout_s=10)  # the member leaves: the partition comes back
        seen["ours"].clear()
        send(sender, settings, [f"k{i}".encode() for i in range(40)])
        await until(lambda: seen["ours"] == {0, 1}, "both partitions again")  # paused one stuck?
    finally:
        for task in pollers:
            task.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)
        await ours.close(timeout_s=10)
