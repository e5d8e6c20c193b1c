"""One Apicurio Registry process on a free loopback port, in-memory storage, for the tests.

Apicurio serves Confluent's Schema Registry API under ``/apis/ccompat/v7``: that URL is what
``STREAMER_SCHEMA_REGISTRY_URL`` and confluent-kafka's ``SchemaRegistryClient`` are given.
Its storage is an in-memory H2 database (the default of both the 2.6.x and the 3.x app), so
a stop forgets every subject: one process per test session, subjects named per test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import httpx

from streamer.dev.apicurio.distribution import (
    DEFAULT_APICURIO_VERSION,
    ApicurioDistribution,
    ApicurioUnavailable,
)

__all__ = ["CCOMPAT_PATH", "ApicurioRegistry"]

CCOMPAT_PATH = "/apis/ccompat/v7"
_START_TIMEOUT_S = 180.0


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ApicurioRegistry:
    """``start()`` spawns the registry and waits until its Confluent API answers;
    ``stop()`` ends it (SIGTERM, then SIGKILL past the bound)."""

    def __init__(
        self,
        workdir: Path,
        *,
        version: str = DEFAULT_APICURIO_VERSION,
        host: str = "127.0.0.1",
        heap_mb: int = 384,
    ) -> None:
        self.workdir = workdir
        self.version = version
        self.host = host
        self.heap_mb = heap_mb
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_s: float | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "apicurio.log"

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise ApicurioUnavailable("Apicurio Registry is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The Confluent-compatible API: what ``STREAMER_SCHEMA_REGISTRY_URL`` is set to."""
        return self.base_url + CCOMPAT_PATH

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def argv(self, dist: ApicurioDistribution, port: int) -> list[str]:
        return [
            dist.java(),
            f"-Xmx{self.heap_mb}m",
            "-XX:+ExitOnOutOfMemoryError",
            # C1 only: the registry serves a few requests per test, and a start that compiles
            # less leaves more of two shared cores to everything else.
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dquarkus.http.host={self.host}",
            f"-Dquarkus.http.port={port}",
            "-jar",
            str(dist.jar),
        ]

    def start(self, timeout_s: float = _START_TIMEOUT_S) -> None:
        if self.alive:
            return
        dist = ApicurioDistribution.ensure(self.version)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port(self.host)
        started = time.monotonic()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv(dist, self.port),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.workdir,
            )
        try:
            self._wait_ready(started + timeout_s)
        except BaseException:
            self.stop()
            raise
        self.ready_s = time.monotonic() - started

    def _wait_ready(self, deadline: float) -> None:
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.alive:
                    raise ApicurioUnavailable(
                        f"Apicurio Registry {self.version} exited at start:\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/subjects").status_code == 200:
                        return
                time.sleep(0.2)
        raise ApicurioUnavailable(
            f"Apicurio Registry {self.version} did not answer on {self.url} in time:\n"
            f"{self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        if not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 20.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10.0)
        self.proc = None

    def __enter__(self) -> ApicurioRegistry:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
