"""A node's command line names files that exist from the node's own directory, where it runs:
`streamer dev up --broker kafka` with the default relative home (``.streamer``) started a
node whose argv said ``.streamer/kafka/node-1/server.properties`` relative to
``.streamer/kafka/node-1``, and Kafka exited with NoSuchFileException."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.dev.kafka import KafkaCluster

pytestmark = pytest.mark.unit


def test_a_relative_home_gives_paths_that_hold_from_the_node_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cluster = KafkaCluster(Path(".streamer") / "kafka")
    node = cluster.nodes[0]
    for path in (node.workdir, node.properties_file, node.log, node.data_dir):
        assert path.is_absolute()
        assert path.is_relative_to(tmp_path)
