"""The real parts, each on a host of its own (``tests.chaos.network``).

- ``kafka_cluster``: Apache Kafka, one KRaft node per host, each advertising its host's
  address; the harness reaches them over the bridge.
- ``HostedPostgres``: PostgreSQL from the pgserver wheel, listening on its host's address.
- ``serve_s3`` and ``serve_receiver``: moto (S3 and SQS) and the webhook receiver run in
  this process, their listening sockets and server threads inside their host (so the run
  reads what they hold directly, and a cut of their host cuts them).
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streamer.dev.kafka import KafkaCluster
from streamer.dev.receiver import Receiver
from streamer.dev.stack import with_database
from tests.chaos.network import Host

__all__ = ["HostedPostgres", "kafka_cluster", "serve_receiver", "serve_s3"]

# Every node has a namespace of its own, so every node can use the same ports.
KAFKA_PORTS = {"PLAINTEXT": 9092, "SSL": 9093, "SASL_PLAINTEXT": 9094, "SASL_SSL": 9095}
KAFKA_PORTS["CONTROLLER"] = 9099


def kafka_cluster(home: Path, hosts: Sequence[Host], **kwargs: Any) -> KafkaCluster:
    """A cluster of ``len(hosts)`` nodes, node ``i+1`` on ``hosts[i]`` (started with
    ``start()``, like any ``KafkaCluster``)."""
    on = {i + 1: host for i, host in enumerate(hosts)}
    return KafkaCluster(
        home,
        nodes=len(hosts),
        hosts=[h.address for h in hosts],
        launcher=lambda node: on[node.node_id].argv(),
        fixed_ports=KAFKA_PORTS,
        **kwargs,
    )


class HostedPostgres:
    """A PostgreSQL server on ``host``: pgserver makes the data directory (as its
    ``pgserver`` user when we are root), then ``pg_ctl`` runs inside the host with TCP on
    the host's address and trust for the hosts' subnet."""

    def __init__(self, host: Host, port: int = 5432) -> None:
        self.host = host
        self.port = port
        self.pgdata = Path(tempfile.mkdtemp(prefix="streamer-chaos-pg-")) / "pg"
        self.admin = f"postgresql://postgres@{host.address}:{port}/postgres"
        self._pgserver: Any = None

    def dsn(self, database: str) -> str:
        return with_database(self.admin, database)

    def start(self) -> HostedPostgres:
        if self._pgserver is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import pgserver
            self._pgserver = pgserver
            # pg_ctl runs as the pgserver user when we are root: it needs a folder it can enter.
            self.pgdata.parent.chmod(0o755)
            pgserver.get_server(self.pgdata, cleanup_mode=None)  # initdb, a socket-only start
            self._ctl("-w", "-m", "fast", "stop")
            with (self.pgdata / "pg_hba.conf").open("a") as hba:
                hba.write("host all all samenet trust\n")
        options = f"-h {self.host.address} -p {self.port} -k {shlex.quote(str(self.pgdata))}"
        log = str(self.pgdata / "host.log")
        self.host.call(lambda: self._ctl("-w", "-l", log, "-o", options, "start"))
        return self

    def _ctl(self, *args: str) -> None:
        user = "pgserver" if os.geteuid() == 0 else None
        self._pgserver.pg_ctl(list(args), pgdata=self.pgdata, user=user, timeout=60)

    def stop(self, mode: str = "fast") -> None:
        """``mode`` "immediate" is a crash: no checkpoint, recovery at the next start."""
        self._ctl("-w", "-m", mode, "stop")

    def destroy(self) -> None:
        if self._pgserver is not None and (self.pgdata / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.pgdata.parent, ignore_errors=True)


def serve_s3(host: Host, port: int = 5000) -> Any:
    """moto's S3 and SQS on ``host``: a started ``ThreadedMotoServer`` (``stop()`` it; a
    later ``host.call(server.start)`` brings it back on the same host, with its data)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=host.address, port=port, verbose=False)
    host.call(server.start)
    return server


def serve_receiver(host: Host, secret: str | None, port: int = 8080) -> Receiver:
    """The webhook receiver on ``host``, up (after ``down()``, ``host.call(receiver.up)``)."""
    receiver = Receiver(secret, host=host.address, port=port)
    return host.call(receiver.up)
