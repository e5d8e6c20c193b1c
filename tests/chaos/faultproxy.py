"""Degraded links: Toxiproxy between a client host and a server's port, unseen by the
client.

This kernel has no netem, so delay, jitter, a bandwidth cap, a blackhole and resets come
from a userspace TCP proxy. Toxiproxy (Shopify's, built from its Go module by ``make
netfaults``) rather than a proxy of ours: it is the tool made for this, well kept and used
widely, it has every one of those toxics per direction, its jitter draws from a seed we
give, and it runs as a process of its own on a host of its own. Packet loss is not
a proxy's to make (a TCP proxy cannot lose bytes of a stream): ``Network.lose`` drops
real packets, and TCP retransmits them.

``interpose`` is transparent: Kafka clients connect to the addresses the brokers
advertise, learnt from metadata, so a proxy they had to be pointed at would be bypassed
after the first answer. A DNAT rule in the client's namespace sends its new connections
to ``server:port`` to the link's listener on the proxy host, which connects upstream.
Interpose before the client connects (established connections keep their path), then add
and remove toxics at will: they act on open connections too. The server sees the proxy
host as its peer; ``Network.cut`` on the client's side still names the server. The DNAT
rule counts the connections it routed (``Link.connections``): evidence that the degraded
link was the one in use.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from tests.chaos.network import TABLE, Host, Network, NetworkError

__all__ = ["FaultProxy", "Link", "Stream"]

API_PORT = 8474
Stream = Literal["upstream", "downstream", "both"]


@dataclass
class Link:
    """One client host's path to one server port through the proxy. Toxics named by kind
    and stream; ``history`` keeps (monotonic time, what changed) for the run's record."""

    proxy: FaultProxy
    name: str
    client: Host
    server: Host
    port: int
    listen_port: int
    nat_handle: int
    history: list[tuple[float, str]] = field(default_factory=list)

    def _toxic(self, kind: str, stream: Stream, attributes: dict[str, Any]) -> None:
        for direction in ("upstream", "downstream") if stream == "both" else (stream,):
            toxic = f"{kind}_{direction}"
            with contextlib.suppress(httpx.HTTPStatusError):  # replace, not stack
                self.proxy.api("DELETE", f"/proxies/{self.name}/toxics/{toxic}")
            self.proxy.api(
                "POST",
                f"/proxies/{self.name}/toxics",
                {"name": toxic, "type": kind, "stream": direction, "attributes": attributes},
            )
        self.history.append((time.monotonic(), f"{kind} {stream} {attributes}"))

    def latency(self, latency_ms: int, jitter_ms: int = 0, *, stream: Stream = "both") -> None:
        """Each chunk held ``latency_ms`` ± ``jitter_ms`` (order kept: it is one stream)."""
        self._toxic("latency", stream, {"latency": latency_ms, "jitter": jitter_ms})

    def bandwidth(self, rate_kb_s: int, *, stream: Stream = "both") -> None:
        self._toxic("bandwidth", stream, {"rate": rate_kb_s})

    def blackhole(self, *, stream: Stream = "both") -> None:
        """Data is swallowed and connections stay open (a silent peer) until ``clear``,
        which closes the connections it held (Toxiproxy's timeout toxic does on removal)."""
        self._toxic("timeout", stream, {"timeout": 0})

    def reset(self, after_ms: int = 0) -> None:
        """Connections are reset ``after_ms`` after data arrives, until ``clear``: with a TCP
        RST those opened after this call, with a plain close those already open."""
        self._toxic("reset_peer", "upstream", {"timeout": after_ms})

    def down(self) -> None:
        """The link refuses: open connections closed, new ones refused, until ``up``."""
        self.proxy.api("POST", f"/proxies/{self.name}", {"enabled": False})
        self.history.append((time.monotonic(), "down"))

    def up(self) -> None:
        self.proxy.api("POST", f"/proxies/{self.name}", {"enabled": True})
        self.history.append((time.monotonic(), "up"))

    def toxics(self) -> list[dict[str, Any]]:
        listing: list[dict[str, Any]] = self.proxy.api("GET", f"/proxies/{self.name}/toxics")
        return listing

    def clear(self) -> None:
        """Every toxic removed and the link up: transparent again."""
        for toxic in self.toxics():
            self.proxy.api("DELETE", f"/proxies/{self.name}/toxics/{toxic['name']}")
        self.proxy.api("POST", f"/proxies/{self.name}", {"enabled": True})
        self.history.append((time.monotonic(), "clear"))

    def connections(self) -> int:
        """Connections of the client that took this link so far."""
        listing = json.loads(
            self.client.nft("--json", "--handle", "list", "chain", "inet", TABLE, "nat_out")
        )
        for entry in listing["nftables"]:
            rule = entry.get("rule")
            if rule and rule["handle"] == self.nat_handle:
                for expr in rule["expr"]:
                    if "counter" in expr:
                        return int(expr["counter"]["packets"])
        return 0


class FaultProxy:
    """``toxiproxy-server`` on a host of its own (``name``) of ``network``; its API on
    port 8474 of that host, reached by the harness over the bridge."""

    def __init__(
        self,
        network: Network,
        *,
        name: str = "toxiproxy",
        seed: int | None = None,
        log: Path | None = None,
        binary: str = "toxiproxy-server",
    ) -> None:
        self.network = network
        self.name = name
        self.seed = seed
        self.log = log
        self.binary = binary
        self.host: Host | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.links: list[Link] = []
        self._client: httpx.Client | None = None
        self._next_port = 20000

    def start(self, timeout_s: float = 30.0) -> FaultProxy:
        binary = shutil.which(self.binary)
        if binary is None:
            raise NetworkError(f"{self.binary} is not installed: run `make netfaults`")
        self.host = self.network.host(self.name)
        argv = [binary, "-host", self.host.address, "-port", str(API_PORT)]
        if self.seed is not None:
            argv += ["-seed", str(self.seed)]
        out = self.log.open("ab") if self.log else subprocess.DEVNULL
        try:
            self.proc = self.host.popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "LOG_LEVEL": "warn"}
            )
        finally:
            if self.log and not isinstance(out, int):
                out.close()
        self._client = httpx.Client(base_url=f"http://{self.host.address}:{API_PORT}", timeout=10)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._client.get("/version").raise_for_status()
                return self
            except httpx.HTTPError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise NetworkError(
                        f"toxiproxy-server on {self.host.address} did not answer "
                        f"(exit code {self.proc.poll()})"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        if self._client is None:
            raise NetworkError("the fault proxy is not started")
        response = self._client.request(method, path, json=body)
        response.raise_for_status()
        return response.json() if response.content else None

    def interpose(self, client: Host, server: Host, port: int) -> Link:
        """Route ``client``'s new connections to ``server:port`` through the proxy."""
        if self.host is None:
            raise NetworkError("the fault proxy is not started")
        if client.netns is None:
            raise NetworkError("the harness is never interposed (no rules in the root namespace)")
        name = f"{client.name}.{server.name}.{port}"
        listen_port = self._next_port
        self._next_port += 1
        self.api(
            "POST",
            "/proxies",
            {
                "name": name,
                "listen": f"{self.host.address}:{listen_port}",
                "upstream": f"{server.address}:{port}",
                "enabled": True,
            },
        )
        client.nft(
            "add chain inet "
            f"{TABLE} nat_out {{ type nat hook output priority -100 ; policy accept ; }}"
        )
        echoed = client.nft(
            "--echo",
            "--handle",
            *f"add rule inet {TABLE} nat_out ip daddr {server.address} tcp dport {port}".split(),
            *f"counter dnat ip to {self.host.address}:{listen_port}".split(),
        )
        handle = re.search(r"# handle (\d+)", echoed)
        if handle is None:
            raise NetworkError(f"nft did not echo a handle: {echoed!r}")
        link = Link(self, name, client, server, port, listen_port, int(handle.group(1)))
        self.links.append(link)
        return link

    def withdraw(self, link: Link) -> None:
        """The client's new connections go straight to the server again."""
        link.client.nft("delete", "rule", "inet", TABLE, "nat_out", "handle", str(link.nat_handle))
        self.api("DELETE", f"/proxies/{link.name}")
        self.links.remove(link)
