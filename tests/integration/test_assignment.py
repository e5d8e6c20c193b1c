"""Scaling out spreads every topic: a second worker joining a group that reads the product and
media topics takes half of each, the same partition numbers of both (a SKU's product and
media events meet in one worker).

Found by the soak: with ``cooperative-sticky`` (classic) or ``uniform`` (KIP-848), members
joining one after another balanced partition counts only, and the second worker got every
product partition while the first kept every media one: it idled, and adding workers added
no capacity. ``STREAMER_PARTITION_ASSIGNOR=range`` (the default) assigns by topic.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest

from streamer.runtime import Batch, Output, Runner, SimpleHandler, Transaction
from streamer.runtime.metrics import new_registry
from tests.integration.support import fetch, prepare, wait_for

pytestmark = pytest.mark.integration


class Idle(SimpleHandler[Batch]):
    name = "idle"

    def __init__(self, topics: tuple[str, ...]) -> None:
        self.topics = topics

    async def decode(self, batch: Batch) -> Batch:
        return batch

    async def persist(self, tx: Transaction, plan: Batch, effects: None) -> Output:
        return Output()


@pytest.mark.parametrize(
    "group_protocol", ["classic", pytest.param("consumer", marks=pytest.mark.kafka_only)]
)
async def test_a_worker_joining_later_takes_half_of_every_topic(
    make_settings: Any, group_protocol: str
) -> None:
    settings = make_settings(topic_partitions=4, group_protocol=group_protocol)
    prepare(settings)
    product, media = settings.topics.product_topic, settings.topics.media_topic
    group = f"assign-{settings.gallery.group_id}"

    def worker() -> Runner[Any, Any, Any]:
        return Runner.of(
            Idle((product, media)),
            settings,
            group_id=group,
            registry=new_registry(),
            install_signal_handlers=False,
        )

    async def owners() -> dict[str, dict[str, set[int]]]:
        rows = await fetch(
            settings,
            "SELECT owner, topic, partition FROM consumer_offsets WHERE group_id = $1",
            group,
        )
        out: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
        for r in rows:
            out[r["owner"]][r["topic"]].add(r["partition"])
        return out

    stop = asyncio.Event()
    first, second = worker(), worker()
    tasks = [asyncio.create_task(first.run(stop))]
    try:

        async def first_owns_all() -> bool:
            return {k: len(v) for k, v in (await owners())[first.owner].items()} == {
                product: 4,
                media: 4,
            }

        await wait_for(first_owns_all, timeout_s=60, what="the first worker to own everything")
        tasks.append(asyncio.create_task(second.run(stop)))

        async def split() -> bool:
            now = await owners()
            return all(len(now[w.owner][media]) == 2 for w in (first, second))

        await wait_for(split, timeout_s=90, what="the media partitions to split between two")
        now = await owners()
        for w in (first, second):
            assert now[w.owner][product] == now[w.owner][media], "co-partitioned"
    finally:
        stop.set()
        await asyncio.gather(*tasks)
