"""The checkpoint's commit order and its failure paths, with no servers.

The database is an in-memory store whose transactions and savepoints roll back
for real; the producer records what it was asked to publish and what the broker
"acknowledged". A small handler counts messages per key, as a job would.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest

from streamer.runtime.checkpoint import Checkpoint, Transaction
from streamer.runtime.deadletters import DeadLetter
from streamer.runtime.errors import (
    BrokerUnavailable,
    DatabaseDataError,
    DatabaseUnavailable,
    DeliveryRefused,
    DeliveryUnavailable,
    FencedError,
)
from streamer.runtime.handler import Batch, Output, OutputMessage, SimpleHandler

pytestmark = pytest.mark.unit

TOPIC = "in"
TP = (TOPIC, 0)


@dataclass
class Msg:
    """The part of confluent_kafka.Message the runtime reads."""

    key_: bytes
    offset_: int
    partition_: int = 0

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def key(self) -> bytes:
        return self.key_

    def value(self) -> bytes:
        return b"v"

    def headers(self) -> list[tuple[str, bytes]]:
        return []

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)


@dataclass
class Store:
    """Rows, offsets and epochs; a transaction works on a copy that replaces them on commit."""

    rows: dict[str, int] = field(default_factory=dict)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    epochs: dict[tuple[str, int], int] = field(default_factory=lambda: {TP: 1})
    log: list[str] = field(default_factory=list)
    fail_commit: bool = False
    commits: int = 0

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        self.log.append("begin")
        tx = FakeTransaction({"rows": dict(self.rows), "offsets": dict(self.offsets)})
        try:
            yield tx
        except BaseException:
            self.log.append("rollback")
            raise
        if self.fail_commit:
            self.fail_commit = False
            self.log.append("rollback")
            raise DatabaseUnavailable("connection lost at COMMIT")
        self.rows, self.offsets = tx.conn["rows"], tx.conn["offsets"]
        self.commits += 1
        self.log.append("commit")

    async def advance(
        self, tx: Transaction, offsets: Mapping[tuple[str, int], tuple[int, int]]
    ) -> None:
        self.log.append("advance")
        lost = sorted(tp for tp, (_, epoch) in offsets.items() if self.epochs.get(tp) != epoch)
        if lost:
            raise FencedError(lost)
        for tp, (offset, _) in offsets.items():
            tx.conn["offsets"][tp] = offset


class FakeTransaction(Transaction):
    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        saved = copy.deepcopy(self.conn)
        try:
            yield
        except BaseException:
            self.conn.clear()
            self.conn.update(saved)
            raise


@dataclass
class Broker:
    """A producer whose flush can fail; ``acked`` is what reached the topics."""

    log: list[str]
    pending: list[tuple[str, bytes | None]] = field(default_factory=list)
    acked: list[tuple[str, bytes | None]] = field(default_factory=list)
    fail_flush: BaseException | None = None

    def produce(self, topic: str, value: bytes | None, **kw: Any) -> None:
        self.log.append(f"produce {topic}")
        self.pending.append((topic, kw.get("key")))

    def flush(self, timeout_s: float = 30.0) -> int:
        self.log.append("flush")
        sent, self.pending = self.pending, []
        if self.fail_flush is not None:
            error, self.fail_flush = self.fail_flush, None
            raise error
        self.acked.extend(sent)
        return len(sent)


class CountPerKey(SimpleHandler[Batch]):
    """Counts messages per key; the key ``poison`` is refused by the "database"."""

    name = "count"

    async def decode(self, batch: Batch) -> Batch:
        return batch

    async def persist(self, tx: Transaction, plan: Batch, effects: None = None) -> Output:
        self.log.append("write")
        per_key = Counter(m.key().decode() for m in plan.messages)

        async def write(keys: Collection[str]) -> None:
            for key in keys:
                if key == "poison":
                    raise DatabaseDataError("value out of range")
                tx.conn["rows"][key] = tx.conn["rows"].get(key, 0) + per_key[key]

        bad = await tx.isolate(sorted(per_key), write)
        output = Output()
        for msg in plan.messages:
            key = msg.key().decode()
            if key in bad:
                output.letters.append(
                    DeadLetter.from_error(
                        msg, bad[key], group_id="g", job="count", details={"key": key}
                    )
                )
        for key in sorted(set(per_key) - set(bad)):
            output.messages.append(
                OutputMessage("out", str(per_key[key]).encode(), key.encode(), ("count", key))
            )
        return output

    def __init__(self, log: list[str]) -> None:
        self.log = log


async def commit(checkpoint: Checkpoint, handler: CountPerKey, b: Batch) -> Output:
    """What the pipeline asks of the checkpoint: the batch's offsets (epoch 1), its persist."""
    offsets = {tp: (offset, 1) for tp, offset in b.next_offsets.items()}
    return await checkpoint.commit(offsets, partial(handler.persist, plan=b, effects=None))


def setup() -> tuple[Store, Broker, CountPerKey, Checkpoint]:
    store = Store()
    broker = Broker(store.log)
    handler = CountPerKey(store.log)
    checkpoint = Checkpoint(
        store, broker, dlq_topic="dlq", dlq_max_value_bytes=1_000_000, delivery_timeout_s=1
    )
    return store, broker, handler, checkpoint


def batch(*keys: str, start: int = 0) -> Batch:
    return Batch([Msg(key.encode(), start + i) for i, key in enumerate(keys)])  # type: ignore[misc]


async def test_writes_publishes_and_commits_in_the_documented_order() -> None:
    store, broker, handler, checkpoint = setup()
    output = await commit(checkpoint, handler, batch("a", "b", "a"))
    assert store.log == [
        "begin",
        "advance",
        "write",
        "produce out",
        "produce out",
        "flush",
        "commit",
    ]
    assert store.rows == {"a": 2, "b": 1}
    assert store.offsets == {TP: 3}
    assert sorted(broker.acked) == [("out", b"a"), ("out", b"b")]
    assert output.letters == []


async def test_a_fenced_commit_lands_nothing_and_publishes_nothing() -> None:
    store, broker, handler, checkpoint = setup()
    store.epochs[TP] = 2  # another worker claimed the partition since we did
    b = batch("a", "b")
    with pytest.raises(FencedError) as info:
        await commit(checkpoint, handler, b)
    assert info.value.partitions == [TP]
    assert (store.rows, store.offsets, store.commits) == ({}, {}, 0)
    assert broker.acked == [] and "write" not in store.log
    assert store.log[-1] == "rollback"


async def test_a_delivery_failure_at_the_publish_step_rolls_the_batch_back() -> None:
    store, broker, handler, checkpoint = setup()
    broker.fail_flush = DeliveryUnavailable("1 message(s) not acknowledged by the broker")
    b = batch("a", "b")
    with pytest.raises(DeliveryUnavailable):
        await commit(checkpoint, handler, b)
    assert (store.rows, store.offsets, store.commits) == ({}, {}, 0)
    assert broker.acked == []
    await commit(checkpoint, handler, b)  # the broker is back: the retry lands it
    assert store.rows == {"a": 1, "b": 1} and store.offsets == {TP: 2}
    assert sorted(broker.acked) == [("out", b"a"), ("out", b"b")]


async def test_a_refused_delivery_waits_as_an_outage_instead_of_crashing() -> None:
    store, broker, handler, checkpoint = setup()
    broker.fail_flush = DeliveryRefused("Message size too large")
    b = batch("a")
    with pytest.raises(BrokerUnavailable, match="refused") as info:
        await commit(checkpoint, handler, b)
    assert info.value.retriable and info.value.dependency == "kafka"
    assert store.commits == 0


async def test_a_retried_batch_does_not_publish_what_the_broker_already_acknowledged() -> None:
    store, broker, handler, checkpoint = setup()
    store.fail_commit = True  # published and acknowledged, then the COMMIT is lost
    b = batch("a", "b", "poison")
    with pytest.raises(DatabaseUnavailable):
        await commit(checkpoint, handler, b)
    assert (store.rows, store.commits) == ({}, 0)
    published_once = list(broker.acked)
    assert sorted(published_once) == [("dlq", b"poison"), ("out", b"a"), ("out", b"b")]

    store.log.clear()
    await commit(checkpoint, handler, b)
    assert "flush" not in store.log and not any(e.startswith("produce") for e in store.log)
    assert broker.acked == published_once, "nothing published twice"
    assert store.rows == {"a": 1, "b": 1} and store.offsets == {TP: 3}

    store.log.clear()  # the next batch publishes again: the guard is per batch
    await commit(checkpoint, handler, batch("a", start=3))
    assert broker.acked[-1] == ("out", b"a") and store.rows["a"] == 2


async def test_a_data_error_of_one_key_dead_letters_that_key_only() -> None:
    store, broker, handler, checkpoint = setup()
    b = batch("a", "poison", "b", "poison")
    output = await commit(checkpoint, handler, b)
    assert store.rows == {"a": 1, "b": 1}, "the other keys are written"
    assert store.offsets == {TP: 4}, "the offsets pass the dead-lettered messages too"
    assert [
        (dict(letter.details)["key"], letter.reason, letter.offset) for letter in output.letters
    ] == [
        ("poison", "database_data_error", 1),
        ("poison", "database_data_error", 3),
    ]
    assert sorted(broker.acked) == [
        ("dlq", b"poison"),
        ("dlq", b"poison"),
        ("out", b"a"),
        ("out", b"b"),
    ]
