"""``streamer serve`` as a real process for tests: started on a free port, stopped by the test."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from streamer.dev.stack import free_port
from streamer.settings import Settings
from tests.integration.support import settings_env

FULL_TOKEN = "full-" + secrets.token_urlsafe(24)
READ_TOKEN = "read-" + secrets.token_urlsafe(24)


@dataclass
class ApiServer:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, token: str | None = FULL_TOKEN, **kw: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=120, **kw)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def api_server(
    settings: Settings, tmp_path: Path, *, extra_env: dict[str, str] | None = None
) -> Iterator[ApiServer]:
    """A ``streamer serve`` process with this test's settings, a full and a read-only token."""
    port = free_port()
    env = settings_env(settings)
    env.update(
        {
            "STREAMER_API_HOST": "127.0.0.1",
            "STREAMER_API_PORT": str(port),
            "STREAMER_API_TOKENS": FULL_TOKEN,
            "STREAMER_API_READ_TOKENS": READ_TOKEN,
            "STREAMER_COMPLETION_DELIVERY_TIMEOUT_S": "2",
            "STREAMER_COMPLETION_POLL_INTERVAL_S": "0.5",
            **(extra_env or {}),
        }
    )
    log = tmp_path / f"serve-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamer", "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = ApiServer(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError(f"streamer serve exited: {server.output()}")
            try:
                if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"streamer serve did not answer: {server.output()}")
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        for secret in (FULL_TOKEN, READ_TOKEN):
            assert secret not in server.output(), "a token reached the log"


def seed_payload(request_id: str, skus: list[str], path: str = "/shared/a.jpg") -> dict[str, Any]:
    """The gallery connector's bulk payload (seed 000), one image per SKU."""
    return {
        "request": {
            "request_id": request_id,
            "items": [
                {"sku": sku, "images": [{"file_path": path, "label": sku, "roles": ["base"]}]}
                for sku in skus
            ],
        }
    }


os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
