"""The dev stack's three-node Apache Kafka cluster, as the campaign and an operator use it.

``streamer dev up --broker kafka --kafka-nodes 3`` starts three KRaft nodes with replication
factor 3 and ``min.insync.replicas=2``; each node is signalled by the PID ``stack.json``
records. A node SIGKILLed while a producer at ``acks=all`` writes: leaders move, the ISR
shrinks, nothing acknowledged is lost, and the restarted node rejoins the ISR. ``dev down``
stops every node.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streamer.dev.stack import DevStack
from tests.integration.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.kafka_only, pytest.mark.slow]


def _dev(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    env["STREAMER_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "streamer", "dev", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _isr(admin: AdminClient, topic: str) -> dict[int, tuple[int, list[int]]]:
    meta = admin.list_topics(topic, timeout=10).topics[topic]
    return {p: (m.leader, sorted(m.isrs)) for p, m in meta.partitions.items()}


async def test_a_node_killed_under_acks_all_loses_nothing_and_rejoins(tmp_path: Path) -> None:
    home = tmp_path / "home"
    nodes: dict[int, Any] = {}
    up = _dev(home, "up", "--broker", "kafka", "--kafka-nodes", "3")
    try:
        assert up.returncode == 0, up.stderr
        state = json.loads((home / "stack.json").read_text())
        nodes = {c["node_id"]: c for c in state["components"].values() if c.get("node_id")}
        assert sorted(nodes) == [1, 2, 3]
        bootstrap = state["kafka_bootstrap"]
        admin = AdminClient({"bootstrap.servers": bootstrap})
        topic = "cluster-probe"
        admin.create_topics([NewTopic(topic, num_partitions=6)])[topic].result(timeout=60)
        # created as `streamer topics create` does: the broker's default replication factor
        assert all(isr == [1, 2, 3] for _, isr in _isr(admin, topic).values())
        described = admin.describe_configs([_topic_resource(topic)])
        config = next(iter(described.values())).result(timeout=30)
        assert config["min.insync.replicas"].value == "2"

        acked: set[bytes] = set()
        failed: list[str] = []

        def report(err: Any, msg: Any) -> None:
            if err is None:
                acked.add(msg.value())
            else:
                failed.append(str(err))

        producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                "message.timeout.ms": 120_000,
            }
        )
        sent = 0

        def send(n: int) -> None:
            nonlocal sent
            for _ in range(n):
                producer.produce(
                    topic, str(sent).encode(), key=str(sent).encode(), on_delivery=report
                )
                sent += 1
                producer.poll(0)

        send(2000)
        victim = nodes[2]["pid"]
        os.kill(victim, signal.SIGKILL)  # while deliveries are in flight
        send(3000)
        assert producer.flush(120) == 0

        async def shrunk() -> bool:
            return all(2 not in isr and leader != 2 for leader, isr in _isr(admin, topic).values())

        await wait_for(shrunk, timeout_s=60, what="the ISR to shrink and leaders to move")
        cluster = DevStack(home, broker="kafka", kafka_nodes=3).kafka_cluster()
        node = cluster.node(2)
        assert not node.alive
        node.start()
        node.wait_ready()

        async def rejoined() -> bool:
            return all(isr == [1, 2, 3] for _, isr in _isr(admin, topic).values())

        await wait_for(rejoined, timeout_s=120, what="the restarted node to rejoin every ISR")
        send(500)
        assert producer.flush(60) == 0
        assert failed == []
        assert acked == {str(i).encode() for i in range(sent)}
        assert _count(bootstrap, topic) == sent  # every acknowledged record is there, once
    finally:
        down = _dev(home, "down")
        assert down.returncode == 0, down.stderr
    assert "kafka-1" in down.stderr and "kafka-3" in down.stderr

    async def all_gone() -> bool:
        return not any(_alive(c["pid"]) for c in nodes.values())

    await wait_for(all_gone, timeout_s=30, what="dev down to stop every node")


def _topic_resource(topic: str) -> Any:
    from confluent_kafka.admin import ConfigResource, ResourceType

    return ConfigResource(ResourceType.TOPIC, topic)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat").read_text()
    return status.rsplit(")", 1)[1].split()[0] != "Z"


def _count(bootstrap: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "count", "enable.auto.commit": False}
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        total = 0
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()
