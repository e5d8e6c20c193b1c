"""Apache Kafka brokers started from their jars: one node or a cluster, KRaft combined mode.

Each node is a broker and a controller (``process.roles=broker,controller``) in a process
of its own, started with ``java`` on the jars of ``KafkaDistribution``, with a log dir
that survives restarts. A node is stopped with SIGTERM (a controlled shutdown that moves
its leaders first), SIGKILLed, paused with SIGSTOP or restarted, by its PID: what the
tests and the reliability campaign do to it. ``home/cluster.json`` keeps the cluster id,
the addresses and the ports, so a cluster stopped by ``streamer dev down`` comes back on
the same addresses with its data.

Listeners: PLAINTEXT (clients and the brokers between themselves) and CONTROLLER on every
node; with ``KafkaSecurity``, SSL (PEM keystore, a CA the caller made), SASL_PLAINTEXT and
SASL_SSL with PLAIN and SCRAM-SHA-512 users (SCRAM users are written at format time, as
``kafka-storage format --add-scram`` does). The controller listener stays PLAINTEXT: SCRAM
cannot authenticate controllers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamer.dev.kafka.distribution import (
    DEFAULT_KAFKA_VERSION,
    KafkaDistribution,
    KafkaUnavailable,
    java_executable,
)

__all__ = [
    "KafkaCluster",
    "KafkaNode",
    "KafkaSecurity",
    "KafkaStartError",
    "KafkaTls",
]

_READY = re.compile(rb"Kafka ?Server.{0,40}started", re.IGNORECASE)
_START_TIMEOUT_S = 120.0
# Test-friendly timings that are still real Kafka behaviour: a group's first join is not
# held back, and KIP-848 groups may use the short sessions tests use with the classic
# protocol (the broker's minimum is 45 s otherwise).
TEST_TIMINGS = {
    "group.initial.rebalance.delay.ms": "0",
    "group.consumer.min.session.timeout.ms": "3000",
    "group.consumer.session.timeout.ms": "6000",
    "group.consumer.min.heartbeat.interval.ms": "500",
    "group.consumer.heartbeat.interval.ms": "1000",
    "group.classic.min.session.timeout.ms": "3000",
    "offsets.topic.num.partitions": "12",
}


class KafkaStartError(KafkaUnavailable):
    """A node did not start; the message carries the end of its log."""


@dataclass(frozen=True)
class KafkaTls:
    """PEM files: the CA clients verify the brokers with, and the brokers' key and chain in
    one file (PKCS#8 ``PRIVATE KEY`` first). The certificate must name every host the
    nodes advertise (librdkafka verifies hostnames)."""

    ca: Path
    keystore: Path


@dataclass(frozen=True)
class KafkaSecurity:
    tls: KafkaTls | None = None
    scram_users: Mapping[str, str] = field(default_factory=dict)
    plain_users: Mapping[str, str] = field(default_factory=dict)
    # StandardAuthorizer with ``allow.everyone.if.no.acl.found``: resources without ACLs stay
    # open, and an ACL on a topic denies every principal it does not allow.
    authorizer: bool = False
    super_users: Sequence[str] = ("admin",)

    @property
    def sasl(self) -> bool:
        return bool(self.scram_users or self.plain_users)


def _free_port(host: str, held: contextlib.ExitStack) -> int:
    """A free port, kept bound until ``held`` closes, so ports chosen together are distinct:
    released one at a time, the kernel once gave a node's SASL_PLAINTEXT and CONTROLLER
    listeners the same port, and StorageTool refused the configuration."""
    sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    sock.bind((host, 0))
    return int(sock.getsockname()[1])


def _pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _rss_bytes(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class KafkaNode:
    """One broker+controller process; its PID is what tests signal."""

    node_id: int
    host: str
    ports: dict[str, int]
    workdir: Path
    cluster: KafkaCluster
    proc: subprocess.Popen[bytes] | None = None
    pid: int | None = None
    started_at: float | None = None
    ready_s: float | None = None
    _log_mark: int = 0

    @property
    def properties_file(self) -> Path:
        return self.workdir / "server.properties"

    @property
    def log(self) -> Path:
        return self.workdir / "server.log"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def address(self, listener: str = "PLAINTEXT") -> str:
        return f"{self.host}:{self.ports[listener]}"

    @property
    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None and _pid_alive(self.proc.pid)
        return _pid_alive(self.pid)

    @property
    def rss_bytes(self) -> int:
        return _rss_bytes(self.pid) if self.pid else 0

    def start(self) -> None:
        """Spawn the node; ``wait_ready`` waits for it."""
        if self.alive:
            return
        self._log_mark = self.log.stat().st_size if self.log.exists() else 0
        argv = [*self.cluster.launcher(self), *self.cluster.java_argv(self)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.workdir,
            )
        self.pid = self.proc.pid
        self.started_at = time.monotonic()
        self.ready_s = None

    def started(self) -> bool:
        """The node logged that it started, since the last ``start``."""
        if not self.log.exists():
            return False
        with self.log.open("rb") as handle:
            handle.seek(self._log_mark)
            return _READY.search(handle.read()) is not None

    def wait_ready(self, timeout_s: float = _START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive:
                raise KafkaStartError(f"Kafka node {self.node_id} exited:\n{self.log_tail()}")
            if self.started():
                if self.started_at is not None and self.ready_s is None:
                    self.ready_s = time.monotonic() - self.started_at
                return
            time.sleep(0.1)
        raise KafkaStartError(
            f"Kafka node {self.node_id} did not start within {timeout_s:.0f}s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        if not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def _signal(self, sig: int) -> None:
        if self.pid is not None and self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL: no controlled shutdown, nothing flushed."""
        self._signal(signal.SIGKILL)
        self._reap(10.0)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (a controlled shutdown: leaders move first), then SIGKILL past the bound."""
        self.resume()
        self._signal(signal.SIGTERM)
        if not self._reap(timeout_s):
            self.kill()

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def restart(self, timeout_s: float = _START_TIMEOUT_S) -> None:
        self.stop()
        self.start()
        self.wait_ready(timeout_s)

    def _reap(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None:
                if self.proc.poll() is not None:
                    return True
            elif not _pid_alive(self.pid):
                return True
            time.sleep(0.05)
        return False


class KafkaCluster:
    """``nodes`` KRaft combined nodes rooted at ``home``; ``start()`` formats them once."""

    def __init__(
        self,
        home: Path,
        *,
        nodes: int = 1,
        version: str = DEFAULT_KAFKA_VERSION,
        hosts: Sequence[str] | None = None,
        security: KafkaSecurity | None = None,
        overrides: Mapping[str, str] | None = None,
        heap_mb: int = 512,
        launcher: Callable[[KafkaNode], list[str]] | None = None,
        fixed_ports: Mapping[str, int] | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError("a cluster has at least one node")
        # Absolute: a node runs in its own directory (cwd), and its argv names files in it.
        self.home = home.resolve()
        self.version = version
        self.security = security or KafkaSecurity()
        self.overrides = dict(overrides or {})
        self.heap_mb = heap_mb
        self.launcher: Callable[[KafkaNode], list[str]] = launcher or (lambda _node: [])
        self.distribution: KafkaDistribution | None = None
        hosts = list(hosts) if hosts else ["127.0.0.1"] * nodes
        if len(hosts) != nodes:
            raise ValueError(f"{nodes} nodes need {nodes} hosts, got {len(hosts)}")
        saved = self._load()
        if saved is not None and len(saved["nodes"]) == nodes:
            self.cluster_id: str = saved["cluster_id"]
            layout = [(n["id"], n["host"], n["ports"]) for n in saved["nodes"]]
        else:
            self.cluster_id = _cluster_id()
            with contextlib.ExitStack() as held:
                layout = [
                    (i + 1, host, self._ports(host, fixed_ports, held))
                    for i, host in enumerate(hosts)
                ]
        self.nodes = [
            KafkaNode(node_id, host, dict(ports), self.home / f"node-{node_id}", self)
            for node_id, host, ports in layout
        ]

    # -- layout ---------------------------------------------------------------------------

    @property
    def listeners(self) -> list[str]:
        names = ["PLAINTEXT"]
        if self.security.tls is not None:
            names.append("SSL")
        if self.security.sasl:
            names.append("SASL_PLAINTEXT")
            if self.security.tls is not None:
                names.append("SASL_SSL")
        return names

    def _ports(
        self, host: str, fixed: Mapping[str, int] | None, held: contextlib.ExitStack
    ) -> dict[str, int]:
        if fixed:
            return dict(fixed)
        return {name: _free_port(host, held) for name in [*self.listeners, "CONTROLLER"]}

    @property
    def state_file(self) -> Path:
        return self.home / "cluster.json"

    def _load(self) -> dict[str, Any] | None:
        if not self.state_file.exists():
            return None
        saved: dict[str, Any] = json.loads(self.state_file.read_text())
        return saved

    def _save(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(
            json.dumps(
                {
                    "version": self.version,
                    "cluster_id": self.cluster_id,
                    "nodes": [
                        {"id": n.node_id, "host": n.host, "ports": n.ports, "pid": n.pid}
                        for n in self.nodes
                    ],
                },
                indent=2,
            )
        )

    def bootstrap(self, listener: str = "PLAINTEXT") -> str:
        return ",".join(node.address(listener) for node in self.nodes)

    def node(self, node_id: int) -> KafkaNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    # -- configuration ----------------------------------------------------------------------

    def properties(self, node: KafkaNode) -> dict[str, str]:
        n = len(self.nodes)
        replicas = str(min(3, n))
        min_isr = str(2 if n >= 3 else 1)
        voters = ",".join(f"{m.node_id}@{m.host}:{m.ports['CONTROLLER']}" for m in self.nodes)
        protocols = {
            "PLAINTEXT": "PLAINTEXT",
            "CONTROLLER": "PLAINTEXT",
            "SSL": "SSL",
            "SASL_PLAINTEXT": "SASL_PLAINTEXT",
            "SASL_SSL": "SASL_SSL",
        }
        listeners = [*self.listeners, "CONTROLLER"]
        props: dict[str, str] = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listeners": ",".join(f"{name}://{node.host}:{node.ports[name]}" for name in listeners),
            "advertised.listeners": ",".join(
                f"{name}://{node.host}:{node.ports[name]}" for name in self.listeners
            ),
            "listener.security.protocol.map": ",".join(
                f"{name}:{protocols[name]}" for name in listeners
            ),
            "log.dirs": str(node.data_dir),
            "num.partitions": "1",
            "default.replication.factor": replicas,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": replicas,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            "auto.create.topics.enable": "false",
            "unclean.leader.election.enable": "false",
            **TEST_TIMINGS,
        }
        props.update(self._security_properties())
        props.update(self.overrides)
        return props

    def _security_properties(self) -> dict[str, str]:
        sec = self.security
        props: dict[str, str] = {}
        if sec.tls is not None:
            props.update(
                {
                    "ssl.keystore.type": "PEM",
                    "ssl.keystore.location": str(sec.tls.keystore),
                    "ssl.truststore.type": "PEM",
                    "ssl.truststore.location": str(sec.tls.ca),
                    "ssl.client.auth": "none",
                }
            )
        if sec.sasl:
            props["sasl.enabled.mechanisms"] = "PLAIN,SCRAM-SHA-512"
            plain = " ".join(
                f'user_{name}="{password}"' for name, password in sec.plain_users.items()
            )
            for listener in ("sasl_plaintext", "sasl_ssl"):
                props[f"listener.name.{listener}.plain.sasl.jaas.config"] = (
                    f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain};"
                )
                props[f"listener.name.{listener}.scram-sha-512.sasl.jaas.config"] = (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                )
        if sec.authorizer:
            props["authorizer.class.name"] = (
                "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
            )
            # ANONYMOUS: the PLAINTEXT and CONTROLLER listeners, which the nodes use between
            # themselves.
            props["super.users"] = ";".join(f"User:{u}" for u in ("ANONYMOUS", *sec.super_users))
            props["allow.everyone.if.no.acl.found"] = "true"
        return props

    def java_argv(self, node: KafkaNode, main: str = "kafka.Kafka", *args: str) -> list[str]:
        dist = self._dist()
        return [
            java_executable(),
            f"-Xms{self.heap_mb // 2}m",
            f"-Xmx{self.heap_mb}m",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={dist.log4j_config}",
            f"-Dkafka.logs.dir={node.workdir}",
            "-cp",
            dist.classpath,
            main,
            *(args or [str(node.properties_file)]),
        ]

    def _dist(self) -> KafkaDistribution:
        if self.distribution is None:
            self.distribution = KafkaDistribution.ensure(self.version)
        return self.distribution

    # -- lifecycle --------------------------------------------------------------------------

    def _format(self, node: KafkaNode) -> None:
        node.workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(node.properties_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:  # may hold SASL passwords
            out.writelines(f"{k}={v}\n" for k, v in self.properties(node).items())
        if (node.data_dir / "meta.properties").exists():
            return
        scram = [
            arg
            for name, password in self.security.scram_users.items()
            for arg in ("--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]")
        ]
        argv = self.java_argv(
            node,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            self.cluster_id,
            "-c",
            str(node.properties_file),
            "--ignore-formatted",
            *scram,
        )
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-10:])
            raise KafkaStartError(f"formatting Kafka node {node.node_id} failed:\n{tail}")

    def start(self, timeout_s: float = _START_TIMEOUT_S) -> KafkaCluster:
        """Format what is new, start every node that is not running, and wait until each has
        started and the cluster lists all of them."""
        self._dist()
        self.home.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(self._format, self.nodes))
        for node in self.nodes:
            node.start()
        self._save()
        try:
            for node in self.nodes:
                node.wait_ready(timeout_s)
            self.wait_brokers(len(self.nodes), timeout_s)
        except BaseException:
            self.kill()
            raise
        return self

    def wait_brokers(self, count: int, timeout_s: float = _START_TIMEOUT_S) -> None:
        """Until the cluster's metadata lists ``count`` brokers."""
        from confluent_kafka.admin import AdminClient

        alive = [n for n in self.nodes if n.alive]
        admin = AdminClient({"bootstrap.servers": ",".join(n.address() for n in alive)})
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                seen = len(admin.list_topics(timeout=5).brokers)
                if seen >= count:
                    return
            time.sleep(0.2)
        raise KafkaStartError(f"the cluster lists {seen} of {count} brokers after {timeout_s:.0f}s")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Every node at once: SIGTERM, then SIGKILL past the bound."""
        for node in self.nodes:
            node.resume()
            node._signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            if not node._reap(max(0.0, deadline - time.monotonic())):
                node.kill()
        self._save()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def adopt(self, pids: Mapping[int, int | None]) -> None:
        """Take over nodes a previous process started (``streamer dev down`` stops them)."""
        for node in self.nodes:
            node.pid = pids.get(node.node_id)

    def quorum_leader(self, timeout_s: float = 60.0) -> int:
        """The node id of the active controller, as Kafka's own MetadataQuorumCommand says."""
        alive = [n for n in self.nodes if n.alive]
        out = self.run_tool(
            "org.apache.kafka.tools.MetadataQuorumCommand",
            "--bootstrap-server",
            ",".join(n.address() for n in alive),
            "describe",
            "--status",
            timeout_s=timeout_s,
        )
        match = re.search(r"LeaderId:\s*(\d+)", out)
        if match is None:
            raise KafkaUnavailable(f"no LeaderId in MetadataQuorumCommand's answer:\n{out}")
        return int(match.group(1))

    def run_tool(
        self, main: str, *args: str, timeout_s: float = 120.0, stdin: str | None = None
    ) -> str:
        """One of Kafka's own command-line tools (same jars), its stdout."""
        dist = self._dist()
        argv = [
            java_executable(),
            "-Xmx256m",
            f"-Dlog4j2.configurationFile={dist.tools_log4j_config}",
            "-cp",
            dist.classpath,
            main,
            *args,
        ]
        done = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if done.returncode != 0:
            raise KafkaUnavailable(
                f"{main.rsplit('.', 1)[-1]} exited {done.returncode}: "
                + "\n".join(done.stderr.strip().splitlines()[-10:])
            )
        return done.stdout


def _cluster_id() -> str:
    """What ``kafka-storage random-uuid`` prints: 16 random bytes, URL-safe base64."""
    import base64

    while True:  # an id starting with "-" would read as an option on a command line
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not value.startswith("-"):
            return value
