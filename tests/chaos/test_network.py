"""The campaign's network: hosts in namespaces, cuts, loss, the fault proxy, the parts on
hosts of their own, and nothing left behind. Root only (``make chaos`` runs as root here
and in CI): without it ``Network.start`` fails naming what it needs."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import httpx
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamer.dev.kafka import KafkaCluster
from tests.chaos.faultproxy import FaultProxy
from tests.chaos.hosted import HostedPostgres, kafka_cluster, serve_receiver, serve_s3
from tests.chaos.network import PREFIX, Host, Network, leftovers, sweep

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]


def wait_until(condition: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.1)


class Echo:
    """A TCP server on a host, in this process: echoes what each connection sends, keeps
    it per peer, and can push bytes to a peer unasked."""

    def __init__(self, host: Host, port: int = 7000) -> None:
        def listen() -> socket.socket:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host.address, port))
            sock.listen()
            return sock

        self.sock = host.call(listen)
        self.received: dict[tuple[str, int], bytearray] = {}
        self.conns: dict[tuple[str, int], socket.socket] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.conns[peer] = conn
                self.received[peer] = bytearray()
            threading.Thread(target=self._echo, args=(conn, peer), daemon=True).start()

    def _echo(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.received[peer] += data
            try:
                conn.sendall(data)
            except OSError:
                return

    def from_address(self, address: str) -> bytes:
        with self._lock:
            return b"".join(bytes(v) for (a, _), v in self.received.items() if a == address)

    def peers(self) -> list[str]:
        with self._lock:
            return [a for a, _ in self.conns]

    def push(self, address: str, data: bytes) -> None:
        with self._lock:
            conns = [c for (a, _), c in self.conns.items() if a == address]
        for conn in conns:
            conn.sendall(data)

    def close(self) -> None:
        self.sock.close()
        for conn in list(self.conns.values()):
            conn.close()


def connect(client: Host, server: Host, port: int = 7000) -> socket.socket:
    sock = client.call(lambda: socket.create_connection((server.address, port), timeout=10))
    sock.settimeout(60)
    return sock


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def round_trip(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    return read_exactly(sock, len(data))


def pending(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def root_ruleset() -> str:
    return subprocess.run(
        ["nft", "list", "ruleset"], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture
def net() -> Iterator[Network]:
    with Network() as network:
        yield network


# -- hosts and cuts -------------------------------------------------------------------------


def test_hosts_have_their_own_addresses_and_talk_over_the_bridge(net: Network) -> None:
    a, b = net.host("a"), net.host("b")
    assert a.address != b.address
    shown = a.run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
    assert f"inet {a.address}/24" in shown
    assert b.address not in shown
    echo = Echo(b)
    try:
        with connect(a, b) as sock:
            assert round_trip(sock, b"hello") == b"hello"
        assert echo.peers() == [a.address]  # a's own address, no NAT between hosts
        with connect(net.harness, b) as sock:  # the harness reaches every host too
            assert round_trip(sock, b"harness") == b"harness"
        process = a.popen(["sleep", "30"])
        try:
            assert process.pid in a.pids()  # `ip netns exec` execs: the PID is the command's
            assert process.pid not in b.pids()
        finally:
            process.kill()
            process.wait()
    finally:
        echo.close()


def test_a_cut_stalls_established_connections_both_ways_and_only_for_that_pair(
    net: Network,
) -> None:
    a, b, c = net.host("a"), net.host("b"), net.host("c")
    echo = Echo(b)
    rules_before = root_ruleset()
    try:
        with connect(a, b) as from_a, connect(c, b) as from_c:
            assert round_trip(from_a, b"before") == b"before"
            assert round_trip(from_c, b"before") == b"before"

            fault = net.cut(a, b)
            from_a.sendall(b"held")  # a -> b on the established connection
            echo.push(a.address, b"pushed")  # b -> a on it
            assert round_trip(from_c, b"other pair") == b"other pair"  # c <-> b unaffected
            wait_until(
                lambda: all(n > 0 for n in net.dropped(fault).values()),
                timeout_s=30,
                what="the cut to drop packets both ways",
            )
            assert echo.from_address(a.address) == b"before"
            assert not pending(from_a)
            assert root_ruleset() == rules_before  # the rules live in the hosts' namespaces

            net.restore(fault)
            # TCP retransmits what the cut held, on the same connections
            got = read_exactly(from_a, len(b"heldpushed"))
            assert got in (b"heldpushed", b"pushedheld")
            assert echo.from_address(a.address) == b"beforeheld"
        assert fault.dropped["ab"] > 0 and fault.dropped["ba"] > 0
        assert not fault.active and net.faults == [fault]
        assert "cut a<->b" in fault.describe()
    finally:
        echo.close()


def test_a_one_way_cut_drops_only_its_direction(net: Network) -> None:
    a, b = net.host("a"), net.host("b")
    echo = Echo(b)
    try:
        with connect(a, b) as from_a:
            assert round_trip(from_a, b"before") == b"before"
            fault = net.cut(a, b, both_ways=False)
            echo.push(a.address, b"b-to-a")
            assert read_exactly(from_a, 6) == b"b-to-a"  # b -> a still flows
            from_a.sendall(b"a-to-b")
            wait_until(
                lambda: net.dropped(fault)["ab"] > 0, timeout_s=30, what="a -> b to be dropped"
            )
            assert echo.from_address(a.address) == b"before"
            net.restore(fault)
            assert read_exactly(from_a, 6) == b"a-to-b"  # held, then retransmitted and echoed
        assert fault.dropped["ba"] == 0
    finally:
        echo.close()


def test_bridged_traffic_meets_the_root_forward_hook_only_under_br_netfilter(
    net: Network,
) -> None:
    """Why cuts are made in the hosts' namespaces: whether the root namespace's inet
    tables see the hosts' traffic depends on br_netfilter (on here), and a root rule would
    touch the machine's own firewall. Checked with a counting rule in a probe table of the
    root namespace, removed at the end."""
    a, b = net.host("a"), net.host("b")
    sysctl = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    br_netfilter = sysctl.exists() and sysctl.read_text().strip() == "1"
    probe = f"{PREFIX}{net.tag}probe"
    subprocess.run(
        ["nft", "-f", "-"],
        input=(
            f"table inet {probe} {{\n  chain forwarding {{\n"
            "    type filter hook forward priority 0; policy accept;\n"
            f"    ip saddr {a.address} ip daddr {b.address} counter\n  }}\n}}\n"
        ),
        text=True,
        check=True,
    )
    echo = Echo(b)
    try:
        with connect(a, b) as sock:
            assert round_trip(sock, b"probe") == b"probe"
        listing = json.loads(
            subprocess.run(
                ["nft", "--json", "list", "table", "inet", probe],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        counted = [
            e["counter"]["packets"]
            for item in listing["nftables"]
            if "rule" in item
            for e in item["rule"]["expr"]
            if "counter" in e
        ]
        assert (counted[0] > 0) == br_netfilter
    finally:
        echo.close()
        subprocess.run(["nft", "delete", "table", "inet", probe], check=True)


def test_loss_drops_packets_and_tcp_still_delivers_everything_in_order(net: Network) -> None:
    a, b = net.host("a"), net.host("b")
    echo = Echo(b)
    try:
        with connect(a, b) as sock:
            fault = net.lose(a, b, 10)
            data = os.urandom(256 * 1024)
            back = bytearray()

            def read() -> None:
                back.extend(read_exactly(sock, len(data)))

            reader = threading.Thread(target=read)
            reader.start()
            sock.sendall(data)
            reader.join(timeout=120)
            assert bytes(back) == data
            dropped = net.dropped(fault)
            assert dropped["ab"] > 0 and dropped["ba"] > 0, dropped
            net.restore(fault)
            assert fault.describe().startswith("loss 10% a<->b")
    finally:
        echo.close()


# -- the fault proxy ------------------------------------------------------------------------


def test_the_proxy_delays_keeps_order_blackholes_and_resets_unseen_by_the_client(
    net: Network, tmp_path: Path
) -> None:
    a, b = net.host("a"), net.host("b")
    echo = Echo(b)
    with FaultProxy(net, seed=7, log=tmp_path / "toxiproxy.log") as proxy:
        assert proxy.host is not None
        link = proxy.interpose(a, b, 7000)
        try:
            with connect(a, b) as sock:  # to b's own address: the DNAT is unseen
                assert round_trip(sock, b"plain") == b"plain"
                assert echo.peers() == [proxy.host.address]
                assert link.connections() == 1

                link.latency(300, jitter_ms=100, stream="downstream")
                started = time.monotonic()
                assert round_trip(sock, b"slow") == b"slow"
                assert time.monotonic() - started >= 0.2  # at least latency - jitter

                sent = b"".join(f"{i:04d}".encode() for i in range(200))
                for i in range(0, len(sent), 4):
                    sock.sendall(sent[i : i + 4])
                assert read_exactly(sock, len(sent)) == sent  # jitter never reorders a stream

                link.clear()
                link.blackhole(stream="upstream")
                sock.sendall(b"swallowed")
                link.clear()  # Toxiproxy closes the connections a blackhole held
                with pytest.raises(ConnectionError, match="closed after 0 of"):
                    read_exactly(sock, 1)
                assert b"swallowed" not in echo.from_address(proxy.host.address)

            link.reset()
            with connect(a, b) as sock:
                sock.sendall(b"reset me")
                with pytest.raises(ConnectionResetError):
                    read_exactly(sock, 1)
            link.clear()

            fault = net.cut(a, b)  # a cut names the server even through the proxy
            with pytest.raises(OSError):
                a.call(lambda: socket.create_connection((b.address, 7000), timeout=2))
            net.restore(fault)
            assert fault.dropped["ab"] > 0

            with connect(a, b) as sock:
                assert round_trip(sock, b"again") == b"again"
            assert link.connections() == 3  # the SYN of the cut is dropped before the DNAT
            assert [what.split()[0] for _, what in link.history] == [
                "latency",
                "clear",
                "timeout",
                "clear",
                "reset_peer",
                "clear",
            ]
            proxy.withdraw(link)
            with connect(a, b) as sock:
                assert round_trip(sock, b"direct") == b"direct"
            assert echo.peers()[-1] == a.address
        finally:
            echo.close()


# -- the parts on hosts of their own ----------------------------------------------------------


def test_postgres_s3_and_the_receiver_each_on_a_host_and_one_cut_off_alone(
    net: Network,
) -> None:
    worker = net.host("worker")
    pg_host, s3_host, hook_host = net.host("postgres"), net.host("s3"), net.host("receiver")
    postgres = HostedPostgres(pg_host)
    s3: Any = None
    receiver: Any = None
    try:
        postgres.start()
        s3 = serve_s3(s3_host)
        receiver = serve_receiver(hook_host, secret=None)

        async def query() -> Any:
            conn = await asyncpg.connect(postgres.admin, timeout=3)
            try:
                return await conn.fetchval("SELECT host(inet_client_addr())")
            finally:
                await conn.close()

        def from_worker() -> dict[str, Any]:
            out: dict[str, Any] = {}
            try:
                out["postgres"] = asyncio.run(query())
            except (OSError, TimeoutError) as exc:
                out["postgres"] = exc
            client = boto3.client(
                "s3",
                endpoint_url=f"http://{s3_host.address}:5000",
                region_name="us-east-1",
                aws_access_key_id="chaos",
                aws_secret_access_key="chaos",
            )
            out["s3"] = client.list_buckets()["ResponseMetadata"]["HTTPStatusCode"]
            out["receiver"] = httpx.post(receiver.url, content=b"{}", timeout=5).status_code
            return out

        reached = worker.call(from_worker)
        assert reached["postgres"] == worker.address  # PostgreSQL saw the worker's address
        assert reached["s3"] == 200
        assert reached["receiver"] == 401  # unsigned: the receiver answered
        assert [r.status for r in receiver.snapshot()] == [401]

        fault = net.cut(worker, pg_host)
        cut_off = worker.call(from_worker)
        assert isinstance(cut_off["postgres"], OSError | TimeoutError)
        assert (cut_off["s3"], cut_off["receiver"]) == (200, 401)  # the other links hold
        net.restore(fault)
        assert fault.dropped["ab"] > 0
        assert worker.call(from_worker)["postgres"] == worker.address
    finally:
        if receiver is not None:
            receiver.down()
        if s3 is not None:
            s3.stop()
        postgres.destroy()


# -- Apache Kafka across hosts ------------------------------------------------------------------


@dataclass
class KafkaHosts:
    net: Network
    cluster: KafkaCluster
    brokers: list[Host]
    client: Host
    start_s: float


@pytest.fixture(scope="module")
def kafka_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaHosts]:
    with Network() as net:
        brokers = [net.host(f"kafka-{i}") for i in (1, 2, 3)]
        client = net.host("client")
        cluster = kafka_cluster(tmp_path_factory.mktemp("kafka"), brokers)
        started = time.monotonic()
        cluster.start()
        try:
            yield KafkaHosts(net, cluster, brokers, client, time.monotonic() - started)
        finally:
            cluster.stop()


def _producer(host: Host, bootstrap: str) -> Any:
    config = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "message.timeout.ms": 240_000,
    }
    return host.call(lambda: Producer(config))  # its threads and sockets live in the host


def _isr(admin: AdminClient, topic: str) -> dict[int, tuple[int, list[int]]]:
    meta = admin.list_topics(topic, timeout=10).topics[topic]
    return {p: (m.leader, sorted(m.isrs)) for p, m in meta.partitions.items()}


def _values(host: Host, bootstrap: str, topic: str) -> list[bytes]:
    """Every record's value in ``topic``, read from ``host`` up to the end offsets."""

    def read() -> list[bytes]:
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"read-{topic}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        try:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            ends = {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in meta.partitions
            }
            consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
            values: list[bytes] = []
            positions = dict.fromkeys(ends, 0)
            deadline = time.monotonic() + 120
            while any(positions[p] < ends[p] for p in ends) and time.monotonic() < deadline:
                msg = consumer.poll(1.0)
                if msg is None or msg.error():
                    continue
                values.append(msg.value() or b"")
                positions[msg.partition() or 0] = (msg.offset() or 0) + 1
            return values
        finally:
            consumer.close()

    return host.call(read)


class Sender:
    def __init__(self, producer: Any, topic: str, name: str = "m") -> None:
        self.producer = producer
        self.topic = topic
        self.name = name
        self.sent = 0
        self.acked: set[bytes] = set()
        self.failed: list[str] = []

    def _report(self, err: Any, msg: Any) -> None:
        if err is None:
            self.acked.add(msg.value())
        else:
            self.failed.append(str(err))

    def send(self, n: int) -> None:
        for _ in range(n):
            value = f"{self.name}-{self.sent}".encode()
            self.producer.produce(self.topic, value, key=value, on_delivery=self._report)
            self.sent += 1
            self.producer.poll(0)


def test_three_brokers_on_three_hosts_serve_acks_all_from_a_client_host(
    kafka_hosts: KafkaHosts, capsys: pytest.CaptureFixture[str]
) -> None:
    k = kafka_hosts
    with capsys.disabled():
        print(
            f"\nKafka across namespaces: cluster.start() {k.start_s:.1f}s, nodes ready after "
            + ", ".join(f"{n.ready_s:.1f}s" for n in k.cluster.nodes)
        )
    bootstrap = k.cluster.bootstrap()
    assert bootstrap == ",".join(f"{h.address}:9092" for h in k.brokers)
    for node, host in zip(k.cluster.nodes, k.brokers, strict=True):
        assert node.pid in host.pids()
    admin = AdminClient({"bootstrap.servers": bootstrap})
    advertised = {
        b.id: f"{b.host}:{b.port}" for b in admin.list_topics(timeout=30).brokers.values()
    }
    assert advertised == {i + 1: f"{h.address}:9092" for i, h in enumerate(k.brokers)}

    topic = "across-hosts"
    admin.create_topics([NewTopic(topic, num_partitions=6)])[topic].result(timeout=60)
    sender = Sender(_producer(k.client, bootstrap), topic)
    sender.send(3000)
    assert sender.producer.flush(120) == 0
    connections = k.client.run(["ss", "-Htn", "state", "established", "( dport = :9092 )"])
    assert connections.stdout.strip(), "the producer's connections are not in the client host"
    assert sender.failed == []
    assert len(sender.acked) == 3000
    values = _values(k.client, bootstrap, topic)
    assert sorted(values) == sorted(sender.acked)  # each acknowledged record, once


def test_a_broker_cut_off_from_the_other_two_is_fenced_out_and_comes_back(
    kafka_hosts: KafkaHosts, capsys: pytest.CaptureFixture[str]
) -> None:
    """The victim keeps its link to the client host, and still believes it leads its
    partitions: a producer that knows only the old leaders may keep writing to it (it
    cannot commit at acks=all) until the cut heals. A producer started during the cut
    learns the new leaders from the majority and is served at once."""
    k = kafka_hosts
    bootstrap = k.cluster.bootstrap()
    topic = "broker-cut-off"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=6)])[topic].result(timeout=60)
    wait_until(
        lambda: all(isr == [1, 2, 3] for _, isr in _isr(admin, topic).values()),
        timeout_s=60,
        what="a full ISR",
    )
    before = Sender(_producer(k.client, bootstrap), topic, "before")
    before.send(1000)
    assert before.producer.flush(120) == 0

    victim, others = k.brokers[2], k.brokers[:2]
    majority = ",".join(f"{h.address}:9092" for h in others)
    # The harness reads the cluster's metadata from the majority side only, so a stale
    # answer of the victim cannot satisfy a wait.
    faults = [k.net.cut(victim, other) for other in others]
    faults.append(k.net.cut(victim, k.net.harness))
    cut_at = time.monotonic()
    try:
        before.send(500)  # to every partition, the victim's old ones among them
        majority_admin = AdminClient({"bootstrap.servers": majority})
        wait_until(
            lambda: all(
                3 not in isr and leader != 3 for leader, isr in _isr(majority_admin, topic).values()
            ),
            timeout_s=120,
            what="the cut-off broker to leave every ISR and lead nothing",
        )
        fenced_s = time.monotonic() - cut_at
        during = Sender(_producer(k.client, majority), topic, "during")
        during.send(2000)
        assert during.producer.flush(120) == 0  # the other two keep serving, at acks=all
        assert during.failed == [] and len(during.acked) == 2000
        before.producer.poll(0)  # serves the delivery reports that arrived
        acked_in_cut, waiting = len(before.acked) - 1000, len(before.producer)
    finally:
        for fault in faults:
            k.net.restore(fault)
    assert all(f.dropped["ab"] > 0 and f.dropped["ba"] > 0 for f in faults[:2])
    restored_at = time.monotonic()
    wait_until(
        lambda: all(isr == [1, 2, 3] for _, isr in _isr(admin, topic).values()),
        timeout_s=180,
        what="the broker to rejoin every ISR once the cut is restored",
    )
    rejoined_s = time.monotonic() - restored_at
    before.send(500)
    assert before.producer.flush(240) == 0
    assert before.failed == []  # held while the cut lasted, then served
    with capsys.disabled():
        print(
            f"\nbroker cut off: fenced out of every ISR {fenced_s:.1f}s after the cut; the "
            f"producer that knew the old leaders had {acked_in_cut} of 500 acknowledged "
            f"during the cut ({waiting} waiting); full ISR {rejoined_s:.1f}s after the restore"
        )
    values = _values(k.client, bootstrap, topic)
    acked = before.acked | during.acked
    assert len(acked) == before.sent + during.sent
    assert acked <= set(values)  # nothing acknowledged is lost
    assert len(values) == len(set(values))  # and nothing is written twice


# -- nothing left behind ----------------------------------------------------------------------

_RUN = """
import os, subprocess, sys, time
from tests.chaos.network import Network
from tests.chaos.faultproxy import FaultProxy

mode = sys.argv[1]
def build(net):
    a, b = net.host("a"), net.host("b")
    net.cut(a, b)
    net.lose(a, net.host("c"), 5)
    proxy = FaultProxy(net).start()
    proxy.interpose(a, b, 7000).latency(100)
    inside = a.popen(["sleep", "600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(net.tag, inside.pid, proxy.proc.pid, flush=True)

if mode == "atexit":
    build(Network().start())
    raise RuntimeError("a run that fails outside any with block")
with Network(watchdog=mode != "sigkill-unwatched") as net:
    build(net)
    if mode == "raise":
        raise RuntimeError("a run that fails on purpose")
    time.sleep(600)  # until signalled
"""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("ending", ["raise", "atexit", "sigterm", "sigkill", "sigkill-unwatched"])
def test_nothing_is_left_behind_by_a_run_that_fails_or_is_killed(ending: str) -> None:
    """Closed by ``with``, by ``atexit``, on SIGTERM; after a SIGKILL, by the watchdog or,
    without one, by the next ``sweep`` (each ``Network.start`` runs one)."""
    rules_before = root_ruleset()
    run = subprocess.Popen(
        [sys.executable, "-c", _RUN, ending],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert run.stdout is not None
    line = run.stdout.readline().split()
    assert len(line) == 3, run.stderr.read() if run.stderr else ""
    tag, inside, toxiproxy = line[0], int(line[1]), int(line[2])

    def mine() -> list[str]:
        left = leftovers()
        found = [n for n in left["netns"] + left["links"] if tag in n]
        found += [r for r in left["records"] if r == tag]
        return found + [o for o in left["owners"] if o == str(run.pid)]

    assert any(n.startswith(f"{PREFIX}{tag}-") for n in mine())
    assert leftovers()["routes"]  # the guard against leaving the machine
    if ending == "sigterm":
        run.send_signal(signal.SIGTERM)
    elif ending.startswith("sigkill"):
        run.kill()
    _, err = run.communicate(timeout=60)
    assert run.returncode != 0
    if ending in ("raise", "atexit"):
        assert "fails" in err
    if ending == "sigkill-unwatched":  # nothing ran at exit and nothing watched
        assert any(n.startswith(f"{PREFIX}{tag}-") for n in mine())
        assert any(tag in s for s in sweep())
    wait_until(lambda: mine() == [], timeout_s=30, what=f"network {tag} to be removed")
    wait_until(
        lambda: not _alive(inside) and not _alive(toxiproxy),
        timeout_s=10,
        what="the processes inside the hosts to be gone",
    )
    assert root_ruleset() == rules_before
    left = leftovers()  # the route stays exactly while a process that made networks lives
    assert bool(left["routes"]) == any(_alive(int(pid)) for pid in left["owners"])
