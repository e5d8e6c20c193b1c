"""``/metrics``, ``/healthz`` and ``/readyz`` on one small HTTP server beside the worker."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["HealthServer", "Readiness"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reasons: tuple[str, ...] = ()


class HealthServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str,
        port: int,
        liveness: Callable[[], bool],
        readiness: Callable[[], Readiness],
    ) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self.liveness = liveness
        self.readiness = readiness
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                log.debug("health: %s", format % args)

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/metrics":
                        self._send(200, generate_latest(outer.registry), CONTENT_TYPE_LATEST)
                    elif path == "/healthz":
                        alive = outer.liveness()
                        self._send(
                            200 if alive else 503, b"ok\n" if alive else b"stalled\n", "text/plain"
                        )
                    elif path == "/readyz":
                        state = outer.readiness()
                        body = json.dumps(
                            {"ready": state.ready, "reasons": list(state.reasons)}
                        ).encode()
                        self._send(200 if state.ready else 503, body, "application/json")
                    else:
                        self._send(404, b"not found\n", "text/plain")
                except Exception as exc:  # noqa: BLE001 - a probe must answer, never kill the thread
                    self._send(503, f"error: {exc}\n".encode(), "text/plain")

        return Handler

    def start(self) -> int:
        self._server = ThreadingHTTPServer((self.host, self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )
        self._thread.start()
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
