"""The real parts one chaos run owns, each on a host of its own (``tests.chaos.network``),
each of which the run may break, cut off and repair.

- S3 for the catalog's objects: moto's ``ThreadedMotoServer``, its sockets on the S3 host
  (stopping it keeps its objects, which live in this process); SQS on the same port.
- The brokers: a three-node Apache Kafka cluster (``tests.chaos.hosted.kafka_cluster``).
- PostgreSQL: a server of its own from the ``pgserver`` wheel, on its host
  (``tests.chaos.hosted.HostedPostgres``), so a restart touches no other test.
- Workers: processes of one job (``streamer consume``, ``forward``, ``replicate``,
  ``objects consume``), each on a host of its own, killed, stopped, added and cut off at will.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3

from tests.chaos.network import Host

__all__ = ["CatalogS3", "Workers"]

_KEYS = {"aws_access_key_id": "chaos", "aws_secret_access_key": "chaos"}
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log


def _wait_port(address: str, port: int, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((address, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout_s:.0f}s")


class CatalogS3:
    """Where the catalog's images live, on ``host``; the S3 outage fault stops and starts it.
    moto serves SQS on the same port, so the bucket's notification queue goes down with it."""

    def __init__(self, host: Host, port: int = 5000) -> None:
        from moto.server import ThreadedMotoServer

        self.host = host
        self.port = port
        self.url = f"http://{host.address}:{port}"
        self._server = ThreadedMotoServer(ip_address=host.address, port=port, verbose=False)
        self.up = False

    def start(self) -> None:
        self.host.call(self._server.start)  # its sockets and threads live in the host
        _wait_port(self.host.address, self.port, "moto")
        self.up = True

    def stop(self) -> None:
        self._server.stop()
        self.up = False

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", **_KEYS)

    def sqs(self) -> Any:
        return boto3.client("sqs", endpoint_url=self.url, region_name="us-east-1", **_KEYS)

    def notify_queue(self, bucket: str) -> str:
        """A queue the bucket notifies of every put and delete (as S3 notifies SQS on AWS,
        and as the dev stack wires it): what ``streamer objects consume`` reads."""
        sqs = self.sqs()
        url: str = sqs.create_queue(QueueName=f"{bucket}-objects")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        self.client().put_bucket_notification_configuration(
            Bucket=bucket,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {
                        "QueueArn": arn["Attributes"]["QueueArn"],
                        "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
                    }
                ]
            },
        )
        return url

    def queued(self, url: str) -> int:
        """Messages in the queue, visible or received and not yet deleted."""
        attrs = self.sqs().get_queue_attributes(
            QueueUrl=url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )["Attributes"]
        return sum(int(v) for v in attrs.values())


_WAITS = (b"not reachable yet, retrying", b"consuming starts when it answers")


def _last_wait(log: Path) -> float | None:
    """When the worker last logged that it waits for a dependency before joining (epoch s)."""
    try:
        lines = log.read_bytes().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if any(w in line for w in _WAITS):
            with contextlib.suppress(ValueError):
                stamp = line.split(b" ", 1)[0].decode().rstrip("Z")
                return datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp()
    return None


class Workers:
    """Worker processes of one job (``streamer consume``, ``forward``, ``replicate``,
    ``objects consume``): ``command`` names them, ``argv`` (default: the command) runs them."""

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str],
        command: str = "consume",
        argv: tuple[str, ...] = (),
        place: Callable[[str], Host] | None = None,
    ) -> None:
        self.workdir = workdir
        self.env = env
        self.command = command
        self.argv = argv or (command,)
        # Where a new worker runs: a host of its own (its name), or this namespace.
        self.place = place
        self.hosts: dict[str, Host] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.leaving: set[str] = set()  # sent SIGTERM, not gone yet
        self.started = 0
        self.changed = time.monotonic()  # the group's last membership change seen here
        # (name, exit code, how): "killed" by the run, "left" on SIGTERM, "died" by itself.
        self.exits: list[tuple[str, int, str]] = []

    def add(self, *, crash_points: str = "", seed: int = 0) -> str:
        self.started += 1
        name = f"{self.command}-{self.started}"
        env = dict(self.env)
        armed: tuple[str, ...] = ()
        if crash_points:
            env["STREAMER_TEST_CRASH_POINTS"] = crash_points
            env["STREAMER_TEST_CRASH_SEED"] = str(seed)
            armed = ("--arm-test-crash-points",)  # the variable alone arms nothing
        log = self.log_path(name).open("wb")
        argv = [sys.executable, "-m", "streamer", *armed, *self.argv]
        if self.place is not None:
            self.hosts[name] = host = self.place(name)
            argv = host.argv(*argv)
        self.procs[name] = subprocess.Popen(
            argv,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.changed = time.monotonic()
        return name

    def quiet_s(self) -> float:
        """Seconds since a worker of this job last started, died, was killed or left, or
        last waited for PostgreSQL or the broker at its start: such a worker joins its group
        only once they answer, well after its process started."""
        self.alive()
        quiet = time.monotonic() - self.changed
        for name in self.procs:
            waited = _last_wait(self.log_path(name))
            if waited is not None:
                quiet = min(quiet, time.time() - waited)
        return quiet

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def alive(self) -> list[str]:
        """Workers running, those leaving included (see ``leave``)."""
        for name, proc in list(self.procs.items()):
            if proc.poll() is not None and name not in self.leaving:
                self.exits.append((name, proc.returncode, "died"))
                del self.procs[name]
                self.changed = time.monotonic()
        return list(self.procs)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
            self.exits.append((name, -9, "killed"))
            self.changed = time.monotonic()

    def handles_sigterm(self, name: str) -> bool:
        """Whether the worker's process catches SIGTERM yet (Linux: ``SigCgt`` in its
        status): before, a SIGTERM kills it unannounced, which is no leave at all."""
        proc = self.procs.get(name)
        if proc is None:
            return False
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            return False
        for line in status.splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
        return False

    async def leave(self, name: str, timeout_s: float = 60) -> int:
        """SIGTERM, once the worker catches it: it finishes its batch and leaves the group.

        It counts as alive until it is gone: its replacement is one more worker, not one
        started in its place while it still holds its partitions.
        """
        deadline = time.monotonic() + timeout_s
        while not self.handles_sigterm(name) and time.monotonic() < deadline:
            if name not in self.procs or self.procs[name].poll() is not None:
                break
            await asyncio.sleep(0.1)
        proc = self.procs.get(name)
        if proc is None:
            return 0
        self.leaving.add(name)
        try:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, timeout_s)
        finally:
            self.leaving.discard(name)
        if self.procs.pop(name, None) is not None:  # else killed meanwhile, and counted so
            self.exits.append((name, code, "left"))
        self.changed = time.monotonic()
        return code

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name)
