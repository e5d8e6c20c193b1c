"""Hosts for the chaos campaign: Linux network namespaces on one bridge, and the links
between them cut or made lossy with nftables.

- A host is a network namespace with its loopback up and one veth to a bridge in the root
  namespace, with its own address on a private /24. Every host is on that one L2 segment:
  ``ip_forward`` is 0 here and nothing needs routing. The bridge holds the subnet's first
  address, so the harness (``Network.harness``, the root namespace) reaches every host.
- Processes start inside a host with ``ip netns exec`` (``Host.argv``/``popen``, which
  exec the command: the PID is the command's own). ``Host.call`` runs a function on a thread
  that joined the host's namespace, so the sockets and threads it makes live there: how an
  in-process server (the webhook receiver, moto) or client (a Producer) sits on a host.
- Rules live in each host's own nftables table, never in the root namespace's. They work
  whether or not ``br_netfilter`` passes bridged frames through the root's IP hooks (here
  it does: ``bridge-nf-call-iptables`` is 1, see tests/chaos/test_network.py), they leave
  the machine's own firewall alone, and they vanish with the namespace.
- A cut drops every packet of the pair, whatever its connection state: an established
  connection stalls both ways, as in a partition (not only new connections are refused);
  once restored, TCP retransmits. The output chain runs before NAT (priority -150) and the
  input chain after it (200), so a cut names the peer a process talks to even when
  ``faultproxy`` routes that flow through Toxiproxy on another host.
- Loss is real packet loss, a random draw per packet (``numgen``), which TCP retransmits:
  this kernel has no netem.
- Everything is named ``PREFIX + tag``, and ``STATE_DIR/tag.json`` names the process that
  owns it. ``close()`` removes everything, and runs from ``with``, from ``atexit`` and on
  SIGTERM. A watchdog process sweeps once the owner is gone, however it died (SIGKILL
  too), and ``start()`` first sweeps what any owner that is gone left behind.
- While a network lives, and until its owner process has exited, a blackhole route for
  all of ``SUBNETS`` stands in the root namespace (each network's /24 on its bridge is
  more specific). A client of the harness that outlives the hosts it talked to (a
  librdkafka handle reconnecting to a broker whose namespace is gone) would otherwise
  follow the default route out of the machine with a private address. The watchdog
  removes the route when no owner is left.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal, TypeVar

__all__ = [
    "PREFIX",
    "STATE_DIR",
    "Fault",
    "Host",
    "Network",
    "NetworkError",
    "leftovers",
    "sweep",
]

PREFIX = "stc"
STATE_DIR = Path("/run/streamer-chaos-net")
SUBNETS = ipaddress.IPv4Network("10.213.0.0/16")  # one /24 of it per network
TABLE = "streamer_chaos"
_CLONE_NEWNET = 0x40000000
_HOST_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}\Z")
_HANDLE = re.compile(r"# handle (\d+)")

T = TypeVar("T")


class NetworkError(RuntimeError):
    """A namespace, link or rule could not be made or removed; the message names the
    command and what it said."""


def _run(argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> str:
    done = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    if check and done.returncode != 0:
        raise NetworkError(f"`{' '.join(argv)}` exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def _require_tools() -> None:
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if missing:
        raise NetworkError(
            f"the chaos hosts need {' and '.join(missing)} (Debian packages iproute2, "
            "nftables): run `make netfaults`"
        )
    if os.geteuid() != 0:
        raise NetworkError("the chaos hosts need root (network namespaces, nftables)")


_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


def _enter(netns: str) -> None:
    """Move the calling thread (only it) into ``netns``."""
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetworkError(f"setns into {netns}: {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Host:
    """A machine of the campaign: a namespace with one address (``netns`` None: the
    harness itself, in the root namespace, reaching every host over the bridge)."""

    name: str
    address: str
    netns: str | None

    def argv(self, *argv: str) -> list[str]:
        """``argv`` run inside this host (what ``KafkaCluster(launcher=...)`` prefixes)."""
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        kwargs.setdefault("start_new_session", True)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.Popen(self.argv(*argv), **kwargs)

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("timeout", 60)
        return subprocess.run(self.argv(*argv), text=True, check=False, **kwargs)

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` on a thread inside this host: the sockets it opens and the threads it
        starts (a server's, librdkafka's) stay in the host after it returns."""
        if self.netns is None:
            return fn()
        out: list[T] = []
        failed: list[BaseException] = []
        netns = self.netns

        def inside() -> None:
            try:
                _enter(netns)
                out.append(fn())
            except BaseException as exc:  # re-raised on the caller's thread
                failed.append(exc)

        thread = threading.Thread(target=inside, name=f"in-{self.name}")
        thread.start()
        thread.join()
        if failed:
            raise failed[0]
        return out[0]

    def pids(self) -> list[int]:
        if self.netns is None:
            return []
        return [int(p) for p in _run(["ip", "netns", "pids", self.netns], check=False).split()]

    def nft(self, *args: str, stdin: str | None = None) -> str:
        if self.netns is None:
            raise NetworkError("no rules in the root namespace: the harness is never cut there")
        return _run(self.argv("nft", *args), stdin=stdin)


Kind = Literal["cut", "loss"]


@dataclass
class Fault:
    """A cut or a lossy link between two hosts, ``a`` to ``b`` (and back when
    ``both_ways``); ``dropped`` counts the packets its rules dropped (read live by
    ``Network.dropped``, kept when restored): a fault that dropped none never fired."""

    kind: Kind
    a: Host
    b: Host
    both_ways: bool
    percent: float = 100.0
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    # (host, chain, direction, handle): direction "ab" for packets a sends to b, "ba" back.
    rules: list[tuple[Host, str, str, int]] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=lambda: {"ab": 0, "ba": 0})

    @property
    def active(self) -> bool:
        return self.ended is None

    def describe(self) -> str:
        arrow = "<->" if self.both_ways else "->"
        what = "cut" if self.kind == "cut" else f"loss {self.percent:g}%"
        return (
            f"{what} {self.a.name}{arrow}{self.b.name}: dropped {self.dropped['ab']} "
            f"{self.a.name}->{self.b.name}, {self.dropped['ba']} back"
        )


def _proc_start(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_alive(record: dict[str, Any]) -> bool:
    pid = int(record.get("pid", 0))
    return pid > 0 and _proc_start(pid) == record.get("start")


def _netns_names() -> list[str]:
    return [line.split()[0] for line in _run(["ip", "netns", "list"]).splitlines() if line]


def _link_names() -> list[str]:
    out = _run(["ip", "-o", "link", "show"])
    return [m.group(1) for m in re.finditer(r"^\d+: ([^:@\s]+)", out, re.M)]


def _tag_of(name: str, prefix: str) -> str | None:
    match = re.match(rf"{re.escape(prefix)}([0-9a-f]{{4}})", name)
    return match.group(1) if match else None


def _records(state_dir: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in state_dir.glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            found[path.stem] = json.loads(path.read_text())
    return found


def leftovers(prefix: str = PREFIX, state_dir: Path = STATE_DIR) -> dict[str, list[str]]:
    """What networks of ``prefix`` hold on this machine, live or not: namespaces, links,
    network records, owner processes (PIDs) and the blackhole route."""
    routes = _run(["ip", "route", "show", "exact", str(SUBNETS), "type", "blackhole"])
    return {
        "netns": [n for n in _netns_names() if _tag_of(n, prefix)],
        "links": [n for n in _link_names() if _tag_of(n, prefix)],
        "records": sorted(_records(state_dir)) if state_dir.exists() else [],
        "owners": sorted(p.stem for p in state_dir.glob("*.owner")),
        "routes": [line.strip() for line in routes.splitlines() if line.strip()],
    }


def _kill_inside(netns: str) -> None:
    me = os.getpid()
    for _ in range(50):
        pids = [int(p) for p in _run(["ip", "netns", "pids", netns], check=False).split()]
        pids = [p for p in pids if p != me]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise NetworkError(f"processes in {netns} outlived SIGKILL: {pids}")


def _remove(tag: str, prefix: str, state_dir: Path) -> list[str]:
    removed: list[str] = []
    stem = f"{prefix}{tag}"
    for netns in _netns_names():
        if netns.startswith(f"{stem}-"):
            _kill_inside(netns)
            _run(["ip", "netns", "delete", netns], check=False)
            removed.append(f"netns {netns}")
    for link in _link_names():
        if link.startswith(stem):
            _run(["ip", "link", "delete", link], check=False)
            removed.append(f"link {link}")
    with contextlib.suppress(FileNotFoundError):
        (state_dir / f"{tag}.json").unlink()
        removed.append(f"record {tag}")
    return removed


def _guard(on: bool) -> None:
    """The blackhole route for ``SUBNETS`` in the root namespace, added or removed."""
    present = "blackhole" in _run(
        ["ip", "route", "show", "exact", str(SUBNETS), "type", "blackhole"]
    )
    if on and not present:
        _run(["ip", "route", "add", "blackhole", str(SUBNETS)])
    elif not on and present:
        _run(["ip", "route", "delete", "blackhole", str(SUBNETS)], check=False)


def _drop_guard_if_unused(state_dir: Path) -> None:
    """Processes that started a network keep an ``.owner`` file until they are gone (their
    clients may outlive their networks); the route goes when none is alive."""
    alive = False
    for path in state_dir.glob("*.owner"):
        try:
            owner = json.loads(path.read_text())
        except (OSError, ValueError):
            owner = {}
        if _owner_alive(owner):
            alive = True
        else:
            path.unlink(missing_ok=True)
    if not alive:
        _guard(False)


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Serialises sweeps and allocations of concurrent runs on this machine."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def sweep(prefix: str = PREFIX, state_dir: Path = STATE_DIR) -> list[str]:
    """Remove what networks of ``prefix`` left behind when their owner died without
    closing them (SIGKILL, a crash of the interpreter); networks whose owner is alive, say
    a concurrent run, are left alone. Returns what it removed."""
    with _locked(state_dir):
        return _sweep(prefix, state_dir)


def _sweep(prefix: str, state_dir: Path) -> list[str]:
    records = _records(state_dir)
    found = leftovers(prefix, state_dir)
    tags = {t for n in found["netns"] + found["links"] if (t := _tag_of(n, prefix))}
    tags |= set(records)
    removed: list[str] = []
    for tag in sorted(tags):
        record = records.get(tag)
        if record is not None and _owner_alive(record):
            continue
        removed += _remove(tag, prefix, state_dir)
    _drop_guard_if_unused(state_dir)
    return removed


_open_networks: list[Network] = []
_watchdogs: set[tuple[str, Path]] = set()
_previous_sigterm: Any = None


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds: finally blocks, context managers, atexit


@atexit.register
def _close_all() -> None:
    for network in list(_open_networks):
        with contextlib.suppress(Exception):
            network.close()


def _watch(pid: int, start: str, prefix: str, state_dir: str) -> None:
    """The watchdog: once process ``pid`` has exited, sweep what it left (nothing, when it
    closed its networks) and the route, if no owner is left."""
    while _proc_start(pid) == start:
        time.sleep(0.5)
    sweep(prefix, Path(state_dir))


def _start_watchdog(prefix: str, state_dir: Path) -> None:
    if (prefix, state_dir) in _watchdogs:
        return
    _watchdogs.add((prefix, state_dir))
    root = str(Path(__file__).resolve().parents[2])
    me = os.getpid()
    code = (
        f"import sys; sys.path.insert(0, {root!r}); from tests.chaos.network import _watch; "
        f"_watch({me}, {_proc_start(me)!r}, {prefix!r}, {str(state_dir)!r})"
    )
    subprocess.Popen(
        [sys.executable, "-c", code],
        start_new_session=True,  # outlives a SIGKILL of this process group
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


class Network:
    """Hosts on one bridge, and the faults between them. ``with Network() as net`` or
    ``start()``/``close()``; nothing is made before ``start()``."""

    def __init__(
        self, *, prefix: str = PREFIX, state_dir: Path = STATE_DIR, watchdog: bool = True
    ) -> None:
        self.prefix = prefix
        self.state_dir = state_dir
        self.watchdog = watchdog
        self.tag = ""
        self.subnet: ipaddress.IPv4Network | None = None
        self.hosts: dict[str, Host] = {}
        self.faults: list[Fault] = []
        self.swept: list[str] = []
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def bridge(self) -> str:
        return f"{self.prefix}{self.tag}br"

    @property
    def harness(self) -> Host:
        """The root namespace (this process), on the bridge's address."""
        if self.subnet is None:
            raise NetworkError("the network is not started")
        return Host("harness", str(self.subnet.network_address + 1), None)

    def start(self) -> Network:
        global _previous_sigterm
        _require_tools()
        with _locked(self.state_dir):
            self.swept = _sweep(self.prefix, self.state_dir)
            self.tag, self.subnet = self._allocate()
            record = {"pid": os.getpid(), "start": _proc_start(os.getpid())}
            record["subnet"] = str(self.subnet)
            (self.state_dir / f"{self.tag}.json").write_text(json.dumps(record))
            _guard(True)
            owner = self.state_dir / f"{os.getpid()}.owner"
            owner.write_text(json.dumps({"pid": record["pid"], "start": record["start"]}))
        if self.watchdog:
            _start_watchdog(self.prefix, self.state_dir)
        self._started = True
        _open_networks.append(self)
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        ):
            _previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            _run(["ip", "link", "add", self.bridge, "gso_max_segs", "1", "type", "bridge"])
            _run(["ip", "addr", "add", f"{self.harness.address}/24", "dev", self.bridge])
            _run(["ip", "link", "set", self.bridge, "up"])
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> Network:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill every process inside the hosts, delete the namespaces (their rules go with
        them), the veths and the bridge, and the network's record."""
        global _previous_sigterm
        if not self._started:
            return
        self._started = False
        for fault in self.faults:
            if fault.active:
                fault.ended = time.monotonic()
        _remove(self.tag, self.prefix, self.state_dir)
        if self in _open_networks:
            _open_networks.remove(self)
        if not _open_networks and _previous_sigterm is not None:
            with contextlib.suppress(ValueError):  # not on the main thread
                signal.signal(signal.SIGTERM, _previous_sigterm)
            _previous_sigterm = None

    def _allocate(self) -> tuple[str, ipaddress.IPv4Network]:
        taken_tags = set(_records(self.state_dir))
        taken_tags |= {t for n in _netns_names() + _link_names() if (t := _tag_of(n, self.prefix))}
        tag = next(t for t in (os.urandom(2).hex() for _ in range(1000)) if t not in taken_tags)
        used = {
            ipaddress.ip_interface(m.group(1)).network
            for m in re.finditer(r"inet (\S+)", _run(["ip", "-4", "-o", "addr", "show"]))
        }
        used |= {ipaddress.ip_network(r["subnet"]) for r in _records(self.state_dir).values()}
        for subnet in SUBNETS.subnets(new_prefix=24):
            if not any(subnet.overlaps(u) for u in used):
                return tag, subnet
        raise NetworkError(f"every /24 of {SUBNETS} is in use")

    # -- hosts ------------------------------------------------------------------------------

    def host(self, name: str) -> Host:
        """A new host named ``name`` (its namespace: ``PREFIX+tag-name``), next address."""
        if not self._started or self.subnet is None:
            raise NetworkError("the network is not started")
        if not _HOST_NAME.match(name) or name == "harness":
            raise NetworkError(f"a host name is a-z, 0-9 and '-', up to 31: got {name!r}")
        if name in self.hosts:
            raise NetworkError(f"there is already a host named {name!r}")
        index = len(self.hosts) + 2
        if index >= self.subnet.num_addresses - 1:
            raise NetworkError(f"{self.subnet} has no address left for {name!r}")
        host = Host(
            name, str(self.subnet.network_address + index), f"{self.prefix}{self.tag}-{name}"
        )
        assert host.netns is not None
        veth = f"{self.prefix}{self.tag}v{index}"
        _run(["ip", "netns", "add", host.netns])
        self.hosts[name] = host
        _run(
            ["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns]
        )
        _run(["ip", "link", "set", veth, "master", self.bridge, "up"])
        # One segment per packet (no GSO), as on a wire: a loss drops segments, not 64 KB.
        batch = (
            f"addr add {host.address}/24 dev eth0\nlink set eth0 gso_max_segs 1\n"
            "link set eth0 up\nlink set lo up\n"
        )
        _run(["ip", "-n", host.netns, "-batch", "-"], stdin=batch)
        host.nft(
            "-f",
            "-",
            stdin=(
                f"table inet {TABLE} {{\n"
                "  chain out {\n    type filter hook output priority -150; policy accept;\n  }\n"
                "  chain in {\n    type filter hook input priority 200; policy accept;\n  }\n"
                "}\n"
            ),
        )
        return host

    # -- faults -----------------------------------------------------------------------------

    def cut(self, a: Host, b: Host, *, both_ways: bool = True) -> Fault:
        """Drop every packet from ``a`` to ``b`` (and back, when ``both_ways``), established
        connections included, until ``restore``. With a link of faultproxy between them,
        name its client first."""
        return self._fault("cut", a, b, both_ways, 100.0)

    def lose(self, a: Host, b: Host, percent: float, *, both_ways: bool = True) -> Fault:
        """Drop ``percent`` of the packets from ``a`` to ``b`` (and back), drawn per packet."""
        if not 0 < percent < 100:
            raise NetworkError(f"loss is a percentage between 0 and 100, got {percent}")
        return self._fault("loss", a, b, both_ways, percent)

    def _fault(self, kind: Kind, a: Host, b: Host, both_ways: bool, percent: float) -> Fault:
        if a.address == b.address:
            raise NetworkError(f"a fault needs two hosts, got {a.name} twice")
        fault = Fault(kind, a, b, both_ways, percent)
        draw = "" if kind == "cut" else f"numgen random mod 10000 < {round(percent * 100)} "
        # Both directions are matched in one host, a's (b's when a is the harness: never a
        # rule in the root namespace), once each: a loss is not compounded, and a flow that
        # faultproxy routes through Toxiproxy still names its server there when a is the
        # client (its output chain runs before the DNAT, its input chain after the reverse).
        if a.netns is not None:
            legs = [(a, "out", "daddr", b, "ab"), (a, "in", "saddr", b, "ba")]
        elif b.netns is not None:
            legs = [(b, "in", "saddr", a, "ab"), (b, "out", "daddr", a, "ba")]
        else:
            raise NetworkError("a fault needs a host other than the harness")
        legs = [leg for leg in legs if both_ways or leg[4] == "ab"]
        try:
            for host, chain, match, peer, direction in legs:
                echoed = host.nft(
                    "--echo",
                    "--handle",
                    "add",
                    "rule",
                    "inet",
                    TABLE,
                    chain,
                    *f"ip {match} {peer.address} {draw}counter drop".split(),
                    "comment",
                    f'"{kind} {a.name} {b.name}"',
                )
                handle = _HANDLE.search(echoed)
                if handle is None:
                    raise NetworkError(f"nft did not echo a handle: {echoed!r}")
                fault.rules.append((host, chain, direction, int(handle.group(1))))
        except BaseException:
            self._delete_rules(fault)
            raise
        self.faults.append(fault)
        return fault

    def dropped(self, fault: Fault) -> dict[str, int]:
        """Packets the fault's rules dropped so far, per direction ("ab", "ba")."""
        if not fault.active:
            return dict(fault.dropped)
        counts = {"ab": 0, "ba": 0}
        for host in {h for h, *_ in fault.rules}:
            listing = json.loads(host.nft("--json", "--handle", "list", "table", "inet", TABLE))
            packets = {
                (e["rule"]["chain"], e["rule"]["handle"]): _packets(e["rule"])
                for e in listing["nftables"]
                if "rule" in e
            }
            for h, chain, direction, handle in fault.rules:
                if h == host:
                    counts[direction] += packets.get((chain, handle), 0)
        return counts

    def restore(self, fault: Fault) -> Fault:
        """Lift the fault (its drop counts are kept on it). TCP retransmits what it held."""
        if not fault.active:
            return fault
        fault.dropped = self.dropped(fault)
        self._delete_rules(fault)
        fault.ended = time.monotonic()
        return fault

    def restore_all(self) -> None:
        for fault in self.faults:
            self.restore(fault)

    def _delete_rules(self, fault: Fault) -> None:
        for host, chain, _direction, handle in fault.rules:
            host.nft("delete", "rule", "inet", TABLE, chain, "handle", str(handle))
        fault.rules = []

    @contextlib.contextmanager
    def partition(
        self, side: Sequence[Host], other: Sequence[Host], *, both_ways: bool = True
    ) -> Iterator[list[Fault]]:
        """Every host of ``side`` cut from every host of ``other`` for the block."""
        faults: list[Fault] = []
        try:
            for a in side:
                for b in other:
                    faults.append(self.cut(a, b, both_ways=both_ways))
            yield faults
        finally:
            for fault in faults:
                self.restore(fault)


def _packets(rule: dict[str, Any]) -> int:
    for expr in rule.get("expr", []):
        if "counter" in expr:
            return int(expr["counter"]["packets"])
    return 0
