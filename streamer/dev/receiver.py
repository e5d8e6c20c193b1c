"""A webhook receiver for development, tests, the demo and the benchmark.

It verifies every request's signature with the ``standardwebhooks`` package (an
implementation nobody here wrote, so a signing bug cannot hide behind itself),
records every request (arrival time, ``webhook-id``, parsed body, whether the
signature verified, what it answered), and answers what its ``behaviour`` says:
by default 204 to a verified request and 401 otherwise. Behaviours script the
faults the forwarder must survive: 5xx bursts, 429/503 with ``Retry-After``,
refusals for one SKU, a hang past the client's timeout, a 10 MB body, 410, a
redirect. ``down()`` and ``up()`` take it away and bring it back on the same port,
closing open keep-alive connections as a crashed server would. It listens on ``host``
(loopback by default; a chaos host's address when ``up()`` runs inside that host).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

__all__ = ["Behaviour", "Receiver", "Record", "Reply", "free_port"]

_FILL = b"x" * 65536


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Reply:
    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    filler_bytes: int = 0  # a body of this many bytes, streamed, never held in memory
    hang_s: float = 0.0  # wait this long before answering


@dataclass
class Record:
    """One request as the receiver saw it."""

    arrived: float  # time.monotonic() of this process
    arrived_wall: float
    path: str
    webhook_id: str
    timestamp: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    verify_error: str = ""
    status: int = 0
    answered: float = 0.0  # time.monotonic() once the answer was written
    response_complete: bool = True

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300

    @property
    def payload(self) -> Any:
        return json.loads(self.body) if self.body else None

    def events(self) -> list[dict[str, Any]]:
        """The events this request carried (one, or a batch's items)."""
        body = self.payload
        if not isinstance(body, dict):
            return []
        if body.get("type") == "batch":
            return list(body.get("items", []))
        return [body]


Behaviour = Callable[[Record], Reply | None]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    receiver: Receiver


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.receiver._connections.add(self.connection)

    def finish(self) -> None:
        self.server.receiver._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        self.server.receiver._handle(self, body)

    def do_GET(self) -> None:
        self.server.receiver._handle(self, b"")


class Receiver:
    def __init__(
        self,
        secret: str | None,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        path: str = "/webhooks",
        keep_bodies: bool = True,
    ) -> None:
        self._webhook = Webhook(secret) if secret else None
        self.host = host
        self.port = port or free_port()
        self.path = path
        self.keep_bodies = keep_bodies
        self.behaviour: Behaviour | None = None
        self.records: list[Record] = []
        self.count = 0
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    # -- lifecycle ----------------------------------------------------------------------

    def up(self) -> Receiver:
        if self._server is not None:
            return self
        server = _Server((self.host, self.port), _Handler)
        server.receiver = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="receiver", daemon=True)
        self._thread.start()
        return self

    def down(self) -> None:
        """Stop answering, and drop open connections (as a crashed server would)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        for conn in list(self._connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Receiver:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    @contextmanager
    def behaving(self, behaviour: Behaviour | None) -> Iterator[None]:
        previous, self.behaviour = self.behaviour, behaviour
        try:
            yield
        finally:
            self.behaviour = previous

    # -- what was received --------------------------------------------------------------

    def snapshot(self) -> list[Record]:
        with self._lock:
            return list(self.records)

    def accepted(self) -> list[Record]:
        return [r for r in self.snapshot() if r.accepted]

    def accepted_events(self) -> list[tuple[str, dict[str, Any]]]:
        """(webhook-id, event) for every event in an accepted request, in arrival order."""
        return [(r.webhook_id, e) for r in self.accepted() for e in r.events()]

    # -- serving ------------------------------------------------------------------------

    def _verify(self, body: bytes, headers: dict[str, str]) -> tuple[bool, str]:
        if self._webhook is None:
            return False, "the receiver has no secret"
        try:
            self._webhook.verify(body, headers)
        except WebhookVerificationError as exc:
            return False, str(exc)
        except Exception as exc:  # noqa: BLE001 - malformed headers are a failed verification
            return False, f"{type(exc).__name__}: {exc}"
        return True, ""

    def _handle(self, handler: _Handler, body: bytes) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        verified, error = self._verify(body, headers)
        record = Record(
            arrived=time.monotonic(),
            arrived_wall=time.time(),
            path=handler.path,
            webhook_id=headers.get("webhook-id", ""),
            timestamp=headers.get("webhook-timestamp", ""),
            headers=headers,
            body=body if self.keep_bodies else b"",
            verified=verified,
            verify_error=error,
        )
        reply = self.behaviour(record) if self.behaviour is not None else None
        if reply is None:
            reply = (
                Reply(204)
                if verified
                else Reply(401, body=b"signature rejected: " + error.encode())
            )
        record.status = reply.status
        with self._lock:
            self.count += 1
            if self.keep_bodies:
                self.records.append(record)
        if reply.hang_s:
            time.sleep(reply.hang_s)
        try:
            handler.send_response(reply.status)
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            handler.send_header("content-length", str(len(reply.body) + reply.filler_bytes))
            handler.end_headers()
            handler.wfile.write(reply.body)
            left = reply.filler_bytes
            while left > 0:
                chunk = _FILL[: min(left, len(_FILL))]
                handler.wfile.write(chunk)
                left -= len(chunk)
            handler.wfile.flush()
            record.answered = time.monotonic()
        except OSError:
            record.answered = time.monotonic()
            record.response_complete = False
            handler.close_connection = True


def main() -> None:
    """``python -m streamer.dev.receiver PORT``: a counting receiver (secret in
    ``STREAMER_WEBHOOK_SECRET``) for the benchmark; prints its count every second."""
    import os
    import sys

    receiver = Receiver(
        os.environ.get("STREAMER_WEBHOOK_SECRET"), port=int(sys.argv[1]), keep_bodies=False
    )
    receiver.up()
    try:
        while True:
            time.sleep(1)
            print(receiver.count, flush=True)
    except KeyboardInterrupt:
        receiver.down()


if __name__ == "__main__":
    main()
