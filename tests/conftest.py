"""Shared fixtures: the embedded stack starts once per test session, only when a test asks for it.

Each test gets its own topics, consumer group, S3 prefix and PostgreSQL database
from ``make_settings``, so tests never see each other's data.

The broker is Apache Kafka (``--broker kafka``, the default: one node from its Maven
Central jars, with TLS, SASL/SCRAM and PLAIN users and the StandardAuthorizer on listeners
of their own) or Tansu (``--broker tansu``, the demo's broker, for the smoke subset marked
``smoke``). Tests that need what only Apache Kafka serves are marked ``kafka_only`` and are
deselected, with a count in the summary, on a Tansu run.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streamer.dev.kafka import DEFAULT_KAFKA_VERSION, KafkaCluster, KafkaSecurity, KafkaTls
from streamer.dev.stack import DevStack, StackState, ensure_database, pg_answers, with_database
from streamer.settings import Settings
from tests.pki import Pki, make_pki

_MACHINE_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def _candidate_database_url() -> str | None:
    """A PostgreSQL the machine already runs, if any; else the stack starts its own."""
    for value in (
        os.environ.get("STREAMER_TEST_DATABASE_URL"),
        os.environ.get("STREAMER_DATABASE_URL"),
    ):
        if value:
            return value
    return _MACHINE_PG if pg_answers(_MACHINE_PG, timeout_s=1.0) else None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--broker",
        choices=("kafka", "tansu"),
        default=os.environ.get("STREAMER_TEST_BROKER", "kafka"),
        help="the broker of the embedded stack: Apache Kafka (default) or Tansu",
    )
    parser.addoption(
        "--kafka-version",
        default=os.environ.get("STREAMER_TEST_KAFKA_VERSION", DEFAULT_KAFKA_VERSION),
        help="the Apache Kafka release the stack runs (make test-kafka-oldest: the oldest "
        "one the README claims)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--broker") != "tansu":
        return
    kept = [item for item in items if item.get_closest_marker("kafka_only") is None]
    dropped = [item for item in items if item.get_closest_marker("kafka_only") is not None]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@dataclass(frozen=True)
class KafkaAccess:
    """How tests reach the session's Apache Kafka over its secured listeners."""

    cluster: KafkaCluster
    pki: Pki
    users: dict[str, str]  # name -> password, SCRAM-SHA-512 and PLAIN alike

    def bootstrap(self, listener: str) -> str:
        return self.cluster.bootstrap(listener)


@pytest.fixture(scope="session")
def broker_kind(pytestconfig: pytest.Config) -> str:
    return str(pytestconfig.getoption("--broker"))


@pytest.fixture(scope="session")
def _stack_and_access(
    broker_kind: str, pytestconfig: pytest.Config
) -> Iterator[tuple[StackState, DevStack, KafkaAccess | None]]:
    # Outside pytest's own temporary root: that one is kept at mode 0700 by every pytest run
    # on the machine, and PostgreSQL runs as another user when the tests run as root.
    home = Path(tempfile.mkdtemp(prefix="streamer-test-stack-"))
    home.chmod(0o755)
    security = None
    pki = None
    users = {name: secrets.token_urlsafe(12) for name in ("admin", "alice", "bob")}
    if broker_kind == "kafka":
        pki = make_pki(home / "pki")
        security = KafkaSecurity(
            tls=KafkaTls(ca=pki.ca, keystore=pki.keystore),
            scram_users=users,
            plain_users=users,
            authorizer=True,
        )
    dev = DevStack(
        home,
        database_url=_candidate_database_url(),
        database="postgres",
        broker="kafka" if broker_kind == "kafka" else "tansu",
        kafka_security=security,
        kafka_version=str(pytestconfig.getoption("--kafka-version")),
    )
    state = dev.up()
    access = None
    if pki is not None:
        access = KafkaAccess(dev.kafka_cluster(), pki, users)
    try:
        yield state, dev, access
    finally:
        dev.down()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def stack(_stack_and_access: tuple[StackState, DevStack, KafkaAccess | None]) -> StackState:
    return _stack_and_access[0]


@pytest.fixture(scope="session")
def kafka_access(
    _stack_and_access: tuple[StackState, DevStack, KafkaAccess | None],
) -> KafkaAccess:
    """The session's Apache Kafka and its secured listeners (tests marked ``kafka_only``)."""
    access = _stack_and_access[2]
    if access is None:
        pytest.fail("this test needs Apache Kafka: it is marked kafka_only but ran on Tansu")
    return access


@pytest.fixture(scope="session")
def _databases(stack: StackState) -> Iterator[list[str]]:
    created: list[str] = []
    yield created

    async def drop() -> None:
        import asyncpg

        conn = await asyncpg.connect(with_database(stack.database_url, "postgres"))
        try:
            for name in created:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    run_sync(drop())


def run_sync(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def make_settings(stack: StackState, _databases: list[str]) -> Callable[..., Settings]:
    """Settings factory: every call gets new topic names, group id, S3 prefix and database."""

    def factory(**overrides: Any) -> Settings:
        tag = _unique()
        database = f"streamer_t_{tag}"
        run_sync(ensure_database(with_database(stack.database_url, "postgres"), database))
        _databases.append(database)
        values: dict[str, Any] = {
            "kafka_bootstrap": stack.kafka_bootstrap,
            "schema_registry_url": None,
            "product_topic": f"t{tag}.catalog.product.v1",
            "media_topic": f"t{tag}.catalog.media.v1",
            "outcome_topic": f"t{tag}.catalog.gallery.updated.v1",
            "import_completed_topic": f"t{tag}.catalog.import.completed.v1",
            "dlq_topic": f"t{tag}.catalog.gallery.dlq",
            "objects_topic": f"t{tag}.catalog.objects.v1",
            "objects_group_id": f"obj-{tag}",
            "group_id": f"g-{tag}",
            "forward_group_id": f"fwd-{tag}",
            "topic_partitions": 4,
            "fetch_wait_max_ms": 10,
            "session_timeout_ms": 6000,
            "database_url": with_database(stack.database_url, database),
            "s3_endpoint_url": stack.s3_endpoint_url,
            "s3_bucket": stack.s3_bucket,
            "s3_prefix": f"t{tag}/media/catalog/product",
            "s3_access_key_id": "streamer-dev",
            "s3_secret_access_key": "streamer-dev",
            "metrics_port": 0,
            "batch_max_wait_ms": 50,
            "retry_initial_backoff_ms": 50,
            "retry_max_backoff_ms": 500,
            "circuit_reset_timeout_s": 0.5,
        }
        values.update(overrides)
        return Settings.load(None, **values)

    return factory


@pytest.fixture
def s3_client(stack: StackState) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=stack.s3_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="streamer-dev",
        aws_secret_access_key="streamer-dev",
    )


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


# -- A real Schema Registry (Apicurio Registry's Confluent API), for tests that ask for it ------


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Apicurio Registry from Maven Central, in-memory storage, one per session; its ``url`` is
    what ``STREAMER_SCHEMA_REGISTRY_URL`` takes. ``STREAMER_TEST_APICURIO_VERSION`` picks the
    line (2.6.x on Java 17 by default; 3.x needs Java 21+)."""
    from streamer.dev.apicurio import DEFAULT_APICURIO_VERSION, ApicurioRegistry

    version = os.environ.get("STREAMER_TEST_APICURIO_VERSION") or DEFAULT_APICURIO_VERSION
    registry = ApicurioRegistry(tmp_path_factory.mktemp("apicurio"), version=version)
    with registry:
        yield registry
