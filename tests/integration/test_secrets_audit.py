"""Secrets never reach logs, metrics, dead letters, outcome events, ``--help`` or a world-readable
file: every command runs with distinctive secret values, and everything it leaves is searched.

The secrets: the database password (in the DSN), the S3 and replica secret keys, a SASL and an
SSL key password passed through ``STREAMER_KAFKA__*`` (on Apache Kafka the SASL password is
live: a SCRAM-SHA-512 user made for the audit through the Admin API, over the SASL_SSL
listener; on Tansu both are inert, but loaded, validated and handed to librdkafka like real
ones), the webhook signing secret and
a static Authorization header of the forwarder, and the API's bearer tokens. The long-running
commands run as real processes (text logs for the consumer, JSON for the forwarder and the
API), so what is searched is what an operator would see; they export their traces to a
collector in the test, and every span (names, attributes, events, status) is searched too.
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import typer.main
from typer.testing import CliRunner

from streamer.cli import app
from streamer.dev.receiver import Receiver, Record, Reply
from streamer.dev.stack import ComponentState, DevStack, StackState, free_port
from tests.integration.api_support import FULL_TOKEN, READ_TOKEN, api_server, seed_payload
from tests.integration.forwarding import forward_drained
from tests.integration.otlp import OtlpReceiver
from tests.integration.support import (
    Sender,
    dead_letters,
    drained,
    media,
    prepare,
    process,
    put_image,
    read_topic,
    settings_env,
    wait_for,
)

pytestmark = pytest.mark.integration

SIGNING_KEY = b"audit-signing-key-7f3c9e21"
SECRETS = {
    "database password": "dbpw-Qz7Kx81Lm",
    "S3 secret key": "s3sk-Wd40Pn27Ty",
    "replica secret key": "replsk-Hb63Vc19Ur",
    "SASL password": "saslpw-Mk58Jd30Eq",
    "SSL key password": "sslkpw-Rt92Bn46Ws",
    "webhook secret": "whsec_" + base64.b64encode(SIGNING_KEY).decode(),
    "webhook signing key": SIGNING_KEY.decode(),
    "webhook header": "fwdtok-Lx27Gh85Zp",
    "API token": FULL_TOKEN,
    "API read token": READ_TOKEN,
}


def with_password(dsn: str, password: str) -> str:
    parts = urlsplit(dsn)
    user = parts.username or "postgres"
    host = parts.hostname or ""
    netloc = f"{user}:{password}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def secret_env() -> dict[str, str]:
    """The secrets that settings take only from the environment (dict-valued settings)."""
    return {
        "STREAMER_KAFKA__SASL_USERNAME": "audit-user",
        "STREAMER_KAFKA__SASL_PASSWORD": SECRETS["SASL password"],
        "STREAMER_KAFKA__SSL_KEY_PASSWORD": SECRETS["SSL key password"],
        "STREAMER_WEBHOOK_HEADERS__AUTHORIZATION": f"Bearer {SECRETS['webhook header']}",
        "STREAMER_API_TOKENS": FULL_TOKEN,
        "STREAMER_API_READ_TOKENS": READ_TOKEN,
        "STREAMER_REPLICA_ACCESS_KEY_ID": "audit-replica-key-id",
        "STREAMER_REPLICA_SECRET_ACCESS_KEY": SECRETS["replica secret key"],
    }


@pytest.fixture
def live_sasl(request: pytest.FixtureRequest, broker_kind: str) -> dict[str, str]:
    """On Apache Kafka, what makes the audit's SASL password the one that logs in."""
    if broker_kind != "kafka":
        return {}
    from confluent_kafka.admin import (
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    access = request.getfixturevalue("kafka_access")
    admin = AdminClient({"bootstrap.servers": access.bootstrap("PLAINTEXT")})
    upsert = UserScramCredentialUpsertion(
        "audit-user",
        ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
        SECRETS["SASL password"].encode(),
    )
    for future in admin.alter_user_scram_credentials([upsert]).values():
        future.result(timeout=30)
    return {
        "STREAMER_KAFKA_BOOTSTRAP": access.bootstrap("SASL_SSL"),
        "STREAMER_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "STREAMER_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "STREAMER_KAFKA__SSL_CA_LOCATION": str(access.pki.ca),
    }


def leaks(where: str, text: str | bytes | None) -> list[str]:
    if not text:
        return []
    data = text if isinstance(text, str) else text.decode("utf-8", "replace")
    return [f"{name} in {where}" for name, value in SECRETS.items() if value in data]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def run_command(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def all_commands() -> list[list[str]]:
    """Every command path of the CLI: ``[]`` (streamer itself), groups and their commands."""
    found: list[list[str]] = []

    def walk(command: Any, path: list[str]) -> None:
        found.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def test_help_of_every_command_shows_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "STREAMER_DATABASE_URL": with_password(
            "postgresql://postgres@127.0.0.1:5432/x", SECRETS["database password"]
        ),
        "STREAMER_S3_SECRET_ACCESS_KEY": SECRETS["S3 secret key"],
        "STREAMER_WEBHOOK_SECRET": SECRETS["webhook secret"],
        "STREAMER_HOME": "/nonexistent-streamer-home",
        **secret_env(),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    commands = all_commands()
    assert len(commands) > 20 and ["forward", "test-connection"] in commands
    problems = []
    for path in commands:
        result = CliRunner().invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output
        problems += leaks(f"streamer {' '.join(path)} --help", result.output)
    assert problems == []


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


async def test_no_secret_in_logs_metrics_dead_letters_outcomes_or_spans(
    make_settings,
    s3_client,
    stack,
    tmp_path: Path,
    live_sasl: dict[str, str],
    otlp: OtlpReceiver,
) -> None:
    dsn = with_password(make_settings().database.dsn, SECRETS["database password"])
    conn = await asyncpg.connect(dsn)  # the test PostgreSQL trusts local connections
    await conn.close()
    receiver = Receiver(SECRETS["webhook secret"])
    settings = make_settings(
        database_url=dsn,
        s3_secret_access_key=SECRETS["S3 secret key"],
        webhook_url=receiver.url,
        webhook_secret=SECRETS["webhook secret"],
        webhook_max_attempts=1,
        webhook_rate_per_s=0,
        topic_partitions=1,
        max_image_bytes=1000,
    )
    prepare(settings)
    put_image(s3_client, settings, "/audit/a.jpg", b"image")
    sender = Sender(settings)
    topic = settings.topics.media_topic
    sender.send(
        [
            media("AUD-1", 1, [{"file_path": "/audit/a.jpg"}]),
            media("AUD-2", 1, [{"file_path": "/audit/a.jpg"}, {"file_path": "/audit/none.jpg"}]),
        ]
    )
    sender.raw(topic, b"AUD-3", b"not avro at all")
    sender.flush()

    # DEBUG: the most a log ever says; every span exported to a collector in the test
    base_env = {
        **settings_env(settings),
        **secret_env(),
        **live_sasl,
        "STREAMER_LOG_LEVEL": "DEBUG",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.http_url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    problems: list[str] = []

    # the gallery consumer, text logs
    port = free_port()
    env = {**base_env, "STREAMER_LOG_FORMAT": "text", "STREAMER_METRICS_PORT": str(port)}
    log = tmp_path / "consume.log"
    with process(["consume"], env, log) as proc:

        async def consumed() -> bool:
            assert proc.poll() is None, log.read_text()
            return await drained(settings, sender.ends)

        await wait_for(consumed, timeout_s=90, what="streamer consume to drain the topic")
        metrics = scrape(port)
    assert "streamer_events_processed_total" in metrics
    problems += leaks("consume /metrics", metrics)
    problems += leaks("consume log", log.read_text(errors="replace"))

    # the forwarder, JSON logs: one delivery accepted, then the receiver refuses (dead letter)
    def refuse_second(record: Record) -> Reply | None:
        return Reply(422, body=b"rejected: unknown sku") if b"AUD-2" in record.body else None

    port = free_port()
    env = {**base_env, "STREAMER_LOG_FORMAT": "json", "STREAMER_METRICS_PORT": str(port)}
    log = tmp_path / "forward.log"
    ends = {(p.topic(), p.partition()): p.offset() + 1 for p in outcome_messages(settings)}
    assert ends, "the consumer published no outcome events"
    with receiver, receiver.behaving(refuse_second), process(["forward"], env, log) as proc:

        async def forwarded() -> bool:
            assert proc.poll() is None, log.read_text()
            return await forward_drained(settings, ends)

        await wait_for(forwarded, timeout_s=90, what="streamer forward to drain the outcomes")
        metrics = scrape(port)
        test_connection = run_command(["forward", "test-connection"], env)
    received = receiver.snapshot()
    assert received and all(r.verified for r in received)  # the signing secret was in use
    assert {r.headers.get("authorization") for r in received} == {
        f"Bearer {SECRETS['webhook header']}"
    }
    assert '"level"' in log.read_text() or '"levelname"' in log.read_text()
    problems += leaks("forward /metrics", metrics)
    problems += leaks("forward log", log.read_text(errors="replace"))
    problems += leaks("forward test-connection", test_connection.stdout + test_connection.stderr)

    # dead letters (both jobs) and outcome events, every byte of them
    letters = dead_letters(settings)
    reasons = {letter.reason for letter in letters}
    assert {"unknown_framing", "object_missing"} <= reasons
    assert any(letter.job == "forward" for letter in letters), reasons
    for letter in letters:
        problems += leaks(f"dead letter {letter.reason} key", letter.key)
        problems += leaks(f"dead letter {letter.reason} value", letter.value)
        problems += leaks(f"dead letter {letter.reason} message", letter.message)
        for name, value in letter.original_headers:
            problems += leaks(f"dead letter header {name}", value)
    for raw in read_topic(settings, settings.runtime.dlq_topic):
        for name, value in raw.headers() or []:
            problems += leaks(f"dead-letter topic header {name}", value)
    for message in outcome_messages(settings):
        problems += leaks("outcome event", message.value())
    spans = otlp.spans()
    assert {"streamer-gallery", "streamer-forward"} <= {s.service for s in spans}
    assert any(s.name == "dead-letter" for s in spans)
    for span in spans:
        problems += leaks(f"span {span.service}:{span.name}", span.text())
    assert problems == []


def outcome_messages(settings: Any) -> list[Any]:
    return read_topic(settings, settings.topics.outcome_topic)


async def test_serve_logs_metrics_and_spans_keep_the_tokens_and_keys(
    make_settings, tmp_path: Path, live_sasl: dict[str, str], otlp: OtlpReceiver
) -> None:
    dsn = with_password(make_settings().database.dsn, SECRETS["database password"])
    settings = make_settings(database_url=dsn, s3_secret_access_key=SECRETS["S3 secret key"])
    prepare(settings)
    extra = {**secret_env(), **live_sasl, "STREAMER_LOG_FORMAT": "json"}
    extra |= {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.http_url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    with api_server(settings, tmp_path, extra_env=extra) as server:
        async with server.client() as http:
            accepted = await http.post("/v1/galleries/bulk", json=seed_payload("audit", ["A"]))
            assert accepted.status_code in (200, 202), accepted.text
            metrics = (await http.get("/metrics")).text
        async with server.client(token=SECRETS["webhook header"]) as wrong:
            assert (await wrong.get("/v1/bulks")).status_code == 401
        output = server.output()
    spans = otlp.spans()
    assert any(s.name == "bulk intake" for s in spans)
    traced = [p for s in spans for p in leaks(f"span {s.name}", s.text())]
    assert "streamer_api_requests_total" in metrics
    assert leaks("serve /metrics", metrics) + leaks("serve log", output) + traced == []


@pytest.mark.parametrize(
    ("argv", "needs_database"),
    [
        (["db", "migrate"], True),
        (["gallery", "show", "SKU-1"], True),
        (["gallery", "export"], True),
        (["status"], False),
        (["dlq", "list"], False),
    ],
)
def test_a_database_that_cannot_be_reached_is_named_without_its_password(
    argv: list[str], needs_database: bool, make_settings
) -> None:
    """The errors say the database cannot be reached, never the password in its DSN."""
    closed = f"postgresql://streamer:{SECRETS['database password']}@127.0.0.1:{free_port()}/x"
    settings = make_settings(
        database_url=closed, s3_secret_access_key=SECRETS["S3 secret key"], database_timeout_s=2
    )
    env = {**settings_env(settings), **secret_env(), "STREAMER_RETRY_MAX_ATTEMPTS": "1"}
    result = run_command(argv, env)
    output = result.stdout + result.stderr
    assert (result.returncode != 0) is needs_database, output
    assert "Traceback" not in output, output
    assert leaks(f"streamer {' '.join(argv)}", output) == []


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://streamer:{pw}@127.0.0.1:notaport/x",
        "postgresql://streamer:{pw}@[::1/x",
        "postgresql://streamer:{pw}@127.0.0.1:70000/x",
        "mysql://streamer:{pw}@127.0.0.1/x",
    ],
    ids=["port", "ipv6", "port-range", "scheme"],
)
def test_a_malformed_database_url_is_a_configuration_error_without_its_password(
    dsn: str,
) -> None:
    """Regression: a DSN asyncpg cannot parse ended ``streamer db migrate`` (and every command
    using the database) in a ValueError traceback; now it is named when settings load."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")},
        "STREAMER_HOME": "/nonexistent-streamer-home",
        "STREAMER_DATABASE_URL": dsn.format(pw=SECRETS["database password"]),
    }
    result = run_command(["db", "migrate"], env)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "STREAMER_DATABASE_URL" in output and "Traceback" not in output
    assert leaks("streamer db migrate", output) == []


def test_dev_env_and_stack_state_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    state = StackState(
        kafka_bootstrap="127.0.0.1:9092",
        database_url=with_password(
            "postgresql://postgres@127.0.0.1:5432/streamer", SECRETS["database password"]
        ),
        s3_endpoint_url="http://127.0.0.1:1",
        s3_bucket="b",
        components={},
    )
    dev = DevStack(tmp_path)
    dev.env_file.write_text("old\n")
    dev.env_file.chmod(0o644)  # left by an older version: tightened on the next write
    dev._write(state)
    for path in (dev.env_file, dev.state_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert SECRETS["database password"] in dev.env_file.read_text()


def test_the_session_stacks_dev_env_is_readable_by_its_owner_only(stack) -> None:
    """The dev.env ``DevStack.up`` wrote for this session (home/logs/s3.log is its sibling's)."""
    log = stack.components["s3"].log
    assert log is not None
    env_file = Path(log).parent.parent / "dev.env"
    assert "STREAMER_S3_SECRET_ACCESS_KEY" in env_file.read_text()
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600


def test_dev_status_shows_an_external_databases_url_without_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: ``streamer dev status`` (and ``dev up``, ``demo``) printed an external
    database's URL as given, password included."""
    dsn = f"postgresql://streamer:{SECRETS['database password']}@127.0.0.1:{free_port()}/x"
    state = StackState(
        kafka_bootstrap="127.0.0.1:1",
        database_url=dsn,
        s3_endpoint_url="http://127.0.0.1:1",
        s3_bucket="b",
        components={
            "postgres": ComponentState(name="postgres", url=dsn, owned=False),
            "kafka": ComponentState(name="kafka", url="127.0.0.1:1", owned=False),
        },
    )
    DevStack(tmp_path)._write(state)
    monkeypatch.setenv("STREAMER_HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(app, ["dev", "status"])
    assert result.exit_code == 1  # nothing answers
    assert "streamer:***@127.0.0.1" in result.output
    assert leaks("streamer dev status", result.output) == []
