"""Kafka over TLS and SASL, and Kafka's authorizer, passed through ``STREAMER_KAFKA__*``.

Against the session's Apache Kafka: native TLS listeners (PEM keystore; the CA is made by
the tests, and librdkafka verifies the broker's hostname), SASL/SCRAM-SHA-512 and
SASL/PLAIN users that log in, and the StandardAuthorizer. Every command runs as an operator
runs it, as a process: a wrong password or an untrusted certificate ends it at start with
an error naming the setting to fix, never a hang; a principal the authorizer refuses gets an
error naming the topic and the operation, and nothing is published or committed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from streamer.dev.receiver import Receiver
from streamer.dev.stack import free_port
from streamer.settings import Settings
from tests.integration.api_support import FULL_TOKEN, seed_payload
from tests.integration.forwarding import new_secret
from tests.integration.replicate_support import replica_state
from tests.integration.support import (
    Sender,
    drained,
    export_all,
    fetch,
    process,
    put_image,
    read_topic,
    settings_env,
    stored_offsets,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka_only]

WRONG_PASSWORD = "pw-that-must-stay-secret-7f3a"


def _env(settings: Settings, bootstrap: str, **kafka: str) -> dict[str, str]:
    env = settings_env(settings)
    env["STREAMER_KAFKA_BOOTSTRAP"] = bootstrap
    for key, value in kafka.items():
        env[f"STREAMER_KAFKA__{key.upper()}"] = value
    return env


def _scram(access: Any, user: str, password: str | None = None) -> dict[str, str]:
    return {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": user,
        "sasl_password": password if password is not None else access.users[user],
        "ssl_ca_location": str(access.pki.ca),
    }


def _streamer(
    env: dict[str, str], *args: str, stdin: str | None = None, timeout_s: float = 90
) -> subprocess.CompletedProcess[str]:
    """A streamer command as an operator runs it; a hang fails the test instead of passing."""
    return subprocess.run(
        [sys.executable, "-m", "streamer", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


@contextmanager
def _running(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A long-running command; SIGTERM at the end must stop it cleanly: exit 0, or for
    ``serve`` the signal itself, which uvicorn raises again once it has shut down."""
    with process(argv, env, log) as proc:
        yield proc
        assert proc.poll() is None, f"{argv} exited early:\n{log.read_text()[-3000:]}"
        proc.send_signal(signal.SIGTERM)
        clean = (0, -signal.SIGTERM) if argv == ["serve"] else (0,)
        assert proc.wait(timeout=60) in clean, log.read_text()[-3000:]


def _events(path: Path, skus: list[str]) -> Path:
    path.write_text(
        "".join(
            json.dumps(
                {
                    "type": "MediaGalleryChanged",
                    "sku": sku,
                    "version": 1,
                    "mode": "REPLACE",
                    "images": [{"file_path": f"/sec/{sku}.jpg", "position": 0, "roles": ["base"]}],
                }
            )
            + "\n"
            for sku in skus
        )
    )
    return path


def _notification(bucket: str, key: str, etag: str) -> bytes:
    """What MinIO's Kafka target publishes for a put."""
    record = {
        "eventName": "s3:ObjectCreated:Put",
        "eventTime": "2026-12-01T00:00:00.000Z",
        "s3": {
            "bucket": {"name": bucket},
            "object": {"key": key, "eTag": etag, "size": 3, "sequencer": "0A"},
        },
    }
    return json.dumps(
        {"EventName": "s3:ObjectCreated:Put", "Key": f"{bucket}/{key}", "Records": [record]}
    ).encode()


async def test_every_job_and_command_runs_over_sasl_ssl_with_a_scram_login(
    make_settings: Any, s3_client: Any, kafka_access: Any, tmp_path: Path
) -> None:
    """consume, publish, forward, replicate, objects consume, serve, and the topic, status and
    dead-letter commands, all over SASL_SSL as a SCRAM-SHA-512 user with hostname checks on."""
    secret = new_secret()
    receiver = Receiver(secret)
    replica = f"replica-{uuid.uuid4().hex[:10]}"
    s3_client.create_bucket(Bucket=replica)
    api_port = free_port()
    settings = make_settings(
        topic_partitions=2,
        webhook_url=receiver.url,
        webhook_secret=secret,
        replica_bucket=replica,
        replica_group_id=f"r-{uuid.uuid4().hex[:8]}",
    )
    env = _env(settings, kafka_access.bootstrap("SASL_SSL"), **_scram(kafka_access, "alice"))
    env.update(
        {
            "STREAMER_API_HOST": "127.0.0.1",
            "STREAMER_API_PORT": str(api_port),
            "STREAMER_API_TOKENS": FULL_TOKEN,
            "STREAMER_COMPLETION_POLL_INTERVAL_S": "0.5",
            "STREAMER_COMPLETION_DELIVERY_TIMEOUT_S": "2",
        }
    )
    for command in (["db", "migrate"], ["topics", "create", "--partitions", "2"]):
        done = _streamer(env, *command)
        assert done.returncode == 0, done.stderr
    skus = [f"SEC-{i}" for i in range(5)]
    for sku in skus[:-1]:
        put_image(s3_client, settings, f"/sec/{sku}.jpg", sku.encode())  # the last stays missing
    published = _streamer(env, "publish", str(_events(tmp_path / "events.jsonl", skus)), "--json")
    assert published.returncode == 0, published.stderr
    assert [i["status"] for i in json.loads(published.stdout)["request_items"]] == [
        "accepted"
    ] * len(skus)

    bucket, prefix = settings.s3.s3_bucket, settings.s3.s3_prefix
    notifications = Sender(settings)
    notifications.raw(
        settings.objects.objects_topic,
        f"{bucket}/{prefix}/x.jpg".encode(),
        _notification(bucket, f"{prefix}/x.jpg", "0cc175b9c0f1b6a831c399e269772661"),
    )
    notifications.flush()
    with (
        receiver,
        _running(["consume"], env, tmp_path / "consume.log"),
        _running(["forward"], env, tmp_path / "forward.log"),
        _running(["replicate"], env, tmp_path / "replicate.log"),
        _running(["objects", "consume"], env, tmp_path / "objects.log"),
        _running(["serve"], env, tmp_path / "serve.log"),
    ):
        url = f"http://127.0.0.1:{api_port}"

        async def answers() -> bool:
            try:
                async with httpx.AsyncClient() as http:
                    return (await http.get(f"{url}/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_for(answers, timeout_s=60, what="streamer serve to answer")
        put_image(s3_client, settings, "/shared/a.jpg", b"bulk")
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {FULL_TOKEN}"}, timeout=60
        ) as http:
            accepted = await http.post("/v1/galleries/bulk", json=seed_payload("sec", ["SEC-B"]))
            assert accepted.status_code == 202, accepted.text
            bulk = accepted.json()["bulk_uuid"]

            async def everything_done() -> bool:
                galleries = {g["sku"] for g in await export_all(settings) if g["images"]}
                indexed = await fetch(settings, "SELECT key FROM objects")
                state = (await http.get(f"/v1/bulks/{bulk}")).json()
                return (
                    galleries >= {*skus[:-1], "SEC-B"}
                    and {r.body for r in receiver.snapshot()} != set()
                    and len(replica_state(settings)) >= 4
                    and any(r["key"].endswith("x.jpg") for r in indexed)
                    and state.get("complete") is True
                )

            await wait_for(everything_done, timeout_s=180, what="every job to do its part")
        delivered = {json.loads(r.body)["data"]["sku"] for r in receiver.snapshot()}
        assert delivered >= set(skus[:-1]) and all(r.verified for r in receiver.snapshot())

    status = _streamer(env, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert {p["topic"] for p in json.loads(status.stdout)["lag"]} == {
        settings.topics.product_topic,
        settings.topics.media_topic,
    }
    listed = _streamer(env, "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["by_reason"] == {"object_missing": 1}
    for log in sorted(tmp_path.glob("*.log")):  # noqa: ASYNC240
        assert kafka_access.users["alice"] not in log.read_text(errors="replace"), log


def test_a_plain_login_over_sasl_plaintext_publishes(
    make_settings: Any, kafka_access: Any, tmp_path: Path
) -> None:
    settings = make_settings(topic_partitions=1)
    plain = {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_username": "bob",
        "sasl_password": kafka_access.users["bob"],
    }
    env = _env(settings, kafka_access.bootstrap("SASL_PLAINTEXT"), **plain)
    assert _streamer(env, "topics", "create").returncode == 0
    published = _streamer(env, "publish", str(_events(tmp_path / "e.jsonl", ["PLAIN-1"])))
    assert published.returncode == 0, published.stderr
    assert [m.key() for m in read_topic(settings, settings.topics.media_topic)] == [b"PLAIN-1"]


# Every command that talks to Kafka, with what it needs besides Kafka to get that far.
COMMANDS = [
    ["consume"],
    ["forward"],
    ["replicate"],
    ["objects", "consume"],
    ["serve"],
    ["publish", "-"],
    ["topics", "create"],
    ["status"],
    ["dlq", "list"],
]


def _command_env(settings: Settings, bootstrap: str, **kafka: str) -> dict[str, str]:
    env = _env(settings, bootstrap, **kafka)
    env.update(
        {
            "STREAMER_WEBHOOK_URL": "http://127.0.0.1:9/hook",
            "STREAMER_WEBHOOK_SECRET": new_secret(),
            "STREAMER_REPLICA_BUCKET": "replica-anything",
            "STREAMER_API_TOKENS": FULL_TOKEN,
            "STREAMER_API_PORT": str(free_port()),
        }
    )
    return env


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_an_untrusted_certificate_ends_each_command_with_a_clear_error(
    make_settings: Any, kafka_access: Any, command: list[str]
) -> None:
    tls = {"security_protocol": "SSL", "ssl_ca_location": str(kafka_access.pki.other_ca)}
    env = _command_env(make_settings(), kafka_access.bootstrap("SSL"), **tls)
    started = time.monotonic()
    done = _streamer(env, *command, stdin='{"type": "ProductChanged", "sku": "X"}\n')
    assert done.returncode != 0, done.stdout
    assert "TLS handshake with Kafka failed" in done.stderr, done.stderr[-2000:]
    assert "certificate verify failed" in done.stderr
    assert "STREAMER_KAFKA__SSL_CA_LOCATION" in done.stderr
    assert time.monotonic() - started < 90  # bounded by the subprocess timeout: not a hang


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_wrong_password_ends_each_command_with_a_clear_error(
    make_settings: Any, kafka_access: Any, command: list[str], mechanism: str
) -> None:
    kafka = {**_scram(kafka_access, "alice", WRONG_PASSWORD), "sasl_mechanism": mechanism}
    env = _command_env(make_settings(), kafka_access.bootstrap("SASL_SSL"), **kafka)
    done = _streamer(env, *command, stdin='{"type": "ProductChanged", "sku": "X"}\n')
    assert done.returncode != 0, done.stdout
    assert "Kafka refused the SASL login" in done.stderr, done.stderr[-2000:]
    assert "STREAMER_KAFKA__SASL_PASSWORD" in done.stderr
    assert WRONG_PASSWORD not in done.stderr + done.stdout, "the password was printed"


def _allow_only_alice(settings: Settings, access: Any, topic: str) -> None:
    """An ACL naming one principal on a topic: every other principal is then refused it."""
    admin = AdminClient({"bootstrap.servers": access.bootstrap("PLAINTEXT")})
    bindings = [
        AclBinding(
            ResourceType.TOPIC,
            topic,
            ResourcePatternType.LITERAL,
            "User:alice",
            "*",
            operation,
            AclPermissionType.ALLOW,
        )
        for operation in (AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE)
    ]
    for future in admin.create_acls(bindings).values():
        future.result(timeout=30)


async def test_a_principal_the_authorizer_refuses_gets_the_topic_and_operation_named(
    make_settings: Any, s3_client: Any, kafka_access: Any, tmp_path: Path
) -> None:
    settings = make_settings(topic_partitions=1)
    plaintext = _env(settings, kafka_access.bootstrap("PLAINTEXT"))
    for command in (["db", "migrate"], ["topics", "create"]):
        assert _streamer(plaintext, *command).returncode == 0
    media_topic = settings.topics.media_topic
    _allow_only_alice(settings, kafka_access, media_topic)
    events = str(_events(tmp_path / "e.jsonl", ["ACL-1"]))
    alice = _env(settings, kafka_access.bootstrap("SASL_SSL"), **_scram(kafka_access, "alice"))
    bob = _env(settings, kafka_access.bootstrap("SASL_SSL"), **_scram(kafka_access, "bob"))

    refused = _streamer(bob, "publish", events)
    assert refused.returncode != 0, refused.stdout
    assert "Kafka denies User:bob" in refused.stderr, refused.stderr[-2000:]
    assert repr(media_topic) in refused.stderr and "operation" in refused.stderr
    assert read_topic(settings, media_topic, idle_s=1.0) == []  # nothing was published

    put_image(s3_client, settings, "/sec/ACL-1.jpg", b"acl")
    assert _streamer(alice, "publish", events).returncode == 0
    ends = {(media_topic, 0): 1}
    worker = _streamer(bob, "consume", timeout_s=120)
    assert worker.returncode != 0
    assert "Kafka denies User:bob" in worker.stderr and repr(media_topic) in worker.stderr, (
        worker.stderr[-2000:]
    )
    assert await stored_offsets(settings) == {}  # bob committed nothing
    assert await export_all(settings) == []

    log = tmp_path / "alice.log"
    with _running(["consume"], alice, log):

        async def done() -> bool:
            return await drained(settings, ends)

        await wait_for(done, timeout_s=90, what="alice's worker to apply the event bob could not")
    assert [g["sku"] for g in await export_all(settings)] == ["ACL-1"]
