"""One runner, two sources: the same job on a Kafka topic and on an SQS queue meets the same
failure paths alike, because one pipeline and one checkpoint drive both.

- Every message is applied once, and what cannot be applied is dead-lettered.
- An outage of a dependency of the job opens its circuit and pauses the source (a queue
  receives nothing meanwhile); nothing is lost or dead-lettered; it resumes by itself.
- ``StateChanged`` from ``persist`` has the batch decoded and planned again at once.

Fencing, the fourth failure path of the Kafka runner, has nothing to act on for a queue:
an SQS queue assigns no partitions, so no worker can claim them away (the messages of a
worker that dies come back after their visibility timeout, and are applied to the same
effect). The SQS source's only unbounded state was its error list (``SqsStats.errors``),
gone with it: the runner keeps counters.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import boto3
import pytest

from streamer.contract.errors import InvalidEvent
from streamer.errors import DependencyUnavailable
from streamer.runtime import Batch, Output, Runner, SimpleHandler, SqsSource, Transaction
from streamer.runtime.errors import StateChanged
from streamer.runtime.metrics import new_registry
from streamer.settings import Settings
from tests.integration.support import Sender, dead_letters, fetch, prepare, wait_for

pytestmark = pytest.mark.integration


class LedgerDown(DependencyUnavailable):
    dependency = "ledger"


class CountBodies(SimpleHandler[Batch]):
    """Counts messages by their body; a body ``bad`` is dead-lettered."""

    name = "bodies"
    dependencies = ("ledger",)

    def __init__(self, topic: str) -> None:
        self.topics = (topic,)
        self.ledger_up = asyncio.Event()
        self.ledger_up.set()
        self.stale_once = False

    async def decode(self, batch: Batch) -> Batch:
        async def ledger() -> None:
            if not self.ledger_up.is_set():
                raise LedgerDown("ledger unreachable")

        await self.ctx.call("ledger", ledger)
        return batch

    async def persist(self, tx: Transaction, plan: Batch, effects: None) -> Output:
        if self.stale_once:
            self.stale_once = False
            raise StateChanged(["some key"])
        output = Output()
        counts: Counter[str] = Counter()
        for msg in plan.messages:
            body = (msg.value() or b"").decode()
            if body == "bad":
                output.letters.append(self.ctx.dead_letter(msg, InvalidEvent("bad body")))
            else:
                counts[body] += 1
        await tx.conn.execute(
            "INSERT INTO bodies (body, n) SELECT * FROM unnest($1::text[], $2::int[])"
            " ON CONFLICT (body) DO UPDATE SET n = bodies.n + EXCLUDED.n",
            list(counts),
            list(counts.values()),
        )
        return output


class Kind:
    """Where the messages come from, and how to send some."""

    def __init__(self, kind: str, settings: Settings, stack: Any) -> None:
        self.kind = kind
        self.settings = settings
        self.topic = settings.topics.media_topic
        self.sender: Sender | None = None
        self.queue_url = ""
        self.sent = 0
        if kind == "sqs":
            self.sqs = boto3.client(
                "sqs",
                endpoint_url=stack.s3_endpoint_url,
                region_name="us-east-1",
                aws_access_key_id="streamer-dev",
                aws_secret_access_key="streamer-dev",
            )
            name = f"bodies-{uuid.uuid4().hex[:8]}"
            self.queue_url = self.sqs.create_queue(QueueName=name)["QueueUrl"]
        else:
            self.sender = Sender(settings)

    def source(self) -> SqsSource | None:
        if self.kind != "sqs":
            return None
        return SqsSource(self.sqs, self.queue_url, wait_s=1, visibility_s=30)

    def send(self, bodies: list[str]) -> None:
        for body in bodies:
            if self.sender is not None:
                self.sender.raw(self.topic, b"k", body.encode())
            else:
                self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=body)
        if self.sender is not None:
            self.sender.flush()
        self.sent += len(bodies)


@pytest.fixture(params=["kafka", "sqs"])
def kind(request: pytest.FixtureRequest, make_settings: Any, stack: Any) -> Kind:
    settings = make_settings(topic_partitions=1, circuit_reset_timeout_s=0.3, retry_max_attempts=2)
    prepare(settings)
    from tests.conftest import run_sync

    run_sync(fetch(settings, "CREATE TABLE bodies (body text PRIMARY KEY, n int NOT NULL)"))
    return Kind(str(request.param), settings, stack)


def runner(kind: Kind, handler: CountBodies) -> Runner[Any, Any, Any]:
    return Runner.of(
        handler,
        kind.settings,
        group_id=f"bodies-{uuid.uuid4().hex[:6]}",
        source=kind.source(),
        registry=new_registry(),
        install_signal_handlers=False,
    )


async def counts(settings: Settings) -> dict[str, int]:
    return {r["body"]: r["n"] for r in await fetch(settings, "SELECT body, n FROM bodies")}


async def applied(kind: Kind, worker: Runner[Any, Any, Any], task: Any) -> bool:
    if task.done():
        task.result()
    return worker.stats.messages >= kind.sent


async def test_the_same_failure_paths_on_either_source(kind: Kind) -> None:
    handler = CountBodies(kind.topic)
    worker = runner(kind, handler)
    get = worker.registry.get_sample_value
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        # every message once, the bad one dead-lettered
        kind.send(["a", "b", "bad", "a"])
        await wait_for(lambda: applied(kind, worker, task), timeout_s=90, what="the first messages")
        assert await counts(kind.settings) == {"a": 2, "b": 1}
        assert [r.reason for r in dead_letters(kind.settings)] == ["invalid_event"]

        # an outage pauses, loses nothing, and ends by itself
        handler.ledger_up.clear()
        kind.send(["c"] * 3)

        async def open_circuit() -> bool:
            return get("streamer_circuit_state", {"dependency": "ledger"}) == 2

        await wait_for(open_circuit, timeout_s=60, what="the ledger circuit to open")
        assert worker.source.paused and await counts(kind.settings) == {"a": 2, "b": 1}
        assert "circuit ledger open: ledger unreachable" in worker.readiness().reasons
        handler.ledger_up.set()
        await wait_for(lambda: applied(kind, worker, task), timeout_s=90, what="the outage's end")
        assert await counts(kind.settings) == {"a": 2, "b": 1, "c": 3}
        assert not worker.source.paused

        # state changed under the batch: decoded and planned again, applied once
        handler.stale_once = True
        kind.send(["d"])
        await wait_for(lambda: applied(kind, worker, task), timeout_s=90, what="the re-plan")
        assert get("streamer_replanned_batches_total") == 1
        assert (await counts(kind.settings))["d"] == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
    assert len(dead_letters(kind.settings)) == 1, "nothing but the bad message dead-lettered"
