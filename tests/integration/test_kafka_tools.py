"""streamer held against Apache Kafka's own clients, from the same jars as the broker.

- A SKU lands on the same partition whether Java's producer (``ConsoleProducer``, the
  default partitioner: murmur2 of the key) or streamer's publisher sent it, as DESIGN
  promises (``partitioner=murmur2_random`` on our side).
- ``streamer status`` and Kafka's ``ConsumerGroupCommand`` read the offsets a worker
  mirrors to Kafka after each commit: after a drain both say zero lag on every partition,
  and under load they differ by at most one batch per partition.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from streamer.contract.codec import Codec
from streamer.contract.publishing import EventPublisher
from streamer.runtime.publisher import Publisher
from tests.integration.support import (
    Sender,
    drained,
    media,
    prepare,
    put_image,
    read_topic,
    settings_env,
    stored_offsets,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka_only]

CONSUMER_GROUP_COMMAND = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"


def test_java_and_streamer_put_a_sku_on_the_same_partition(
    make_settings: Any, kafka_access: Any
) -> None:
    settings = make_settings(topic_partitions=12)
    java_topic = f"{settings.topics.media_topic}.java"
    admin = AdminClient(settings.kafka.client_config())
    for future in admin.create_topics(
        [NewTopic(t, num_partitions=12) for t in (java_topic, settings.topics.media_topic)]
    ).values():
        future.result(timeout=30)
    skus = [f"SKU-{i:05d}" for i in range(300)] + ["ÉTÉ-ß-1", "a", "x" * 64, "sku with spaces"]

    kafka_access.cluster.run_tool(
        "org.apache.kafka.tools.ConsoleProducer",
        "--bootstrap-server",
        settings.kafka.kafka_bootstrap,
        "--topic",
        java_topic,
        "--property",
        "parse.key=true",
        "--property",
        "key.separator=\t",
        stdin="".join(f"{sku}\tjava\n" for sku in skus),
    )
    publisher = Publisher(settings.kafka)
    publisher.start()
    try:
        events = EventPublisher(publisher, Codec.for_registry(None), settings.topics)
        for i, sku in enumerate(skus):
            events.publish(media(sku, 1, [{"file_path": f"/p/{i}.jpg"}]))
        publisher.flush(30)
    finally:
        publisher.close()

    def placement(topic: str) -> dict[str, int]:
        return {
            m.key().decode(): m.partition()
            for m in read_topic(settings, topic, idle_s=2.0, timeout_s=60)
        }

    java, ours = placement(java_topic), placement(settings.topics.media_topic)
    assert set(java) == set(ours) == set(skus)
    assert len(set(java.values())) == 12, "the keys should spread over every partition"
    assert {sku: ours[sku] for sku in skus} == {sku: java[sku] for sku in skus}


def _group_command_lag(cluster: Any, bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    """LAG per partition as ``kafka-consumer-groups --describe`` prints it."""
    out = cluster.run_tool(
        CONSUMER_GROUP_COMMAND, "--bootstrap-server", bootstrap, "--describe", "--group", group
    )
    lag: dict[tuple[str, int], int] = {}
    header: list[str] | None = None
    for line in out.splitlines():
        cells = line.split()
        if not cells:
            continue
        if cells[0] == "GROUP":
            header = cells
            continue
        if header is None or len(cells) < len(header):
            continue
        row = dict(zip(header, cells, strict=False))
        if re.fullmatch(r"\d+", row.get("LAG", "")):
            lag[(row["TOPIC"], int(row["PARTITION"]))] = int(row["LAG"])
    return lag


def _status_lag(env: dict[str, str]) -> dict[tuple[str, int], int]:
    done = subprocess.run(
        [sys.executable, "-m", "streamer", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return {(p["topic"], p["partition"]): p["lag"] for p in json.loads(done.stdout)["lag"]}


async def test_status_and_kafkas_consumer_group_command_agree_on_lag(
    make_settings: Any, s3_client: Any, kafka_access: Any, tmp_path: Any
) -> None:
    batch = 50
    settings = make_settings(batch_max_events=batch, topic_partitions=4)
    prepare(settings)
    put_image(s3_client, settings, "/lag/1.jpg", b"lag")
    sender = Sender(settings)
    sender.send(media(f"LAG-{i:04d}", 1, [{"file_path": "/lag/1.jpg"}]) for i in range(12000))
    env = settings_env(settings)
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "streamer", "consume"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    cluster = kafka_access.cluster
    bootstrap = settings.kafka.kafka_bootstrap
    group = settings.gallery.group_id

    async def both() -> tuple[dict[Any, int], dict[Any, int]]:
        java, ours = await asyncio.gather(
            asyncio.to_thread(_group_command_lag, cluster, bootstrap, group),
            asyncio.to_thread(_status_lag, env),
        )
        return java, ours

    try:

        async def under_load() -> bool:
            assert worker.poll() is None, log.read_text()[-3000:]
            stored = await stored_offsets(settings)
            return sum(max(0, o) for o in stored.values()) >= 1000

        await wait_for(under_load, timeout_s=120, what="the worker to be busy")
        # The two tools start in a second or two while the worker commits hundreds of events:
        # frozen for that moment, it holds still the offsets both read (and keeps its group,
        # well within the 6 s session).
        worker.send_signal(signal.SIGSTOP)
        try:
            frozen = await stored_offsets(settings)
            java, ours = await both()
        finally:
            worker.send_signal(signal.SIGCONT)
        assert java and any(java.values()), f"no lag to compare under load: {java}"
        for tp, lag in java.items():
            # Both read the offsets mirrored to Kafka after each PostgreSQL commit; one mirror
            # may still be in flight: one batch apart at most, and never past PostgreSQL's.
            assert abs(ours[tp] - lag) <= batch, (tp, ours, java)
            assert sender.ends[tp] - frozen[tp] <= lag <= sender.ends[tp] - frozen[tp] + batch

        async def both_zero() -> bool:
            assert worker.poll() is None, log.read_text()[-3000:]
            if not await drained(settings, sender.ends):
                return False
            java, ours = await both()
            return (
                set(java) == set(sender.ends)
                and not any(java.values())
                and not any(ours[tp] for tp in sender.ends)
            )

        # The mirror to Kafka follows the PostgreSQL commit asynchronously.
        await wait_for(both_zero, timeout_s=180, what="both tools to report zero lag")
    finally:
        worker.terminate()
        worker.wait(timeout=60)
