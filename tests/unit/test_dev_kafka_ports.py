"""The ports of a Kafka cluster's listeners are distinct: a run of the registry tests met a node
whose SASL_PLAINTEXT and CONTROLLER listeners had been given the same port."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.dev.kafka import KafkaCluster, KafkaSecurity, KafkaTls

pytestmark = pytest.mark.unit


def test_every_listener_of_every_node_gets_its_own_port(tmp_path: Path) -> None:
    security = KafkaSecurity(
        tls=KafkaTls(ca=tmp_path / "ca.pem", keystore=tmp_path / "key.pem"),
        scram_users={"alice": "pw"},
    )
    for i in range(20):
        cluster = KafkaCluster(tmp_path / f"c{i}", nodes=3, security=security)
        ports = [port for node in cluster.nodes for port in node.ports.values()]
        assert len(ports) == 15 and len(set(ports)) == 15
