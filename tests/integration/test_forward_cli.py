"""``streamer forward test-connection`` against a real receiver that verifies signatures with
the standardwebhooks package; secrets never printed."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from streamer.cli import app
from streamer.dev.receiver import Receiver
from tests.integration.forwarding import SECRET, new_secret

pytestmark = pytest.mark.integration

TOKEN = "Bearer tok-9f8e7d6c5b4a"


def invoke(*args: str, url: str, secret: str = SECRET) -> tuple[int, str]:
    env = {
        "STREAMER_HOME": "/nonexistent-streamer-home",
        "STREAMER_WEBHOOK_URL": url,
        "STREAMER_WEBHOOK_SECRET": secret,
        "STREAMER_WEBHOOK_HEADERS__AUTHORIZATION": TOKEN,
    }
    result = CliRunner().invoke(app, ["forward", *args], env=env)
    return result.exit_code, result.output


def test_a_receiver_that_verifies_the_signature_accepts_the_test_event() -> None:
    with Receiver(SECRET) as receiver:
        code, out = invoke("test-connection", url=receiver.url)
        (record,) = receiver.snapshot()
    assert code == 0, out
    assert "status   204" in out and "accepted" in out and "latency" in out
    assert record.verified and record.payload["type"] == "test"
    assert record.headers["authorization"] == TOKEN
    assert SECRET not in out and TOKEN not in out

    with Receiver(SECRET) as receiver:
        code, out = invoke("test-connection", "--json", url=receiver.url)
    assert code == 0, out
    answer = json.loads(out)
    assert answer["status"] == "204" and answer["ok"] is True and answer["latency_ms"] >= 0
    assert SECRET not in out and TOKEN not in out


def test_a_receiver_with_another_secret_is_reported_as_rejecting_the_signature() -> None:
    with Receiver(new_secret()) as receiver:
        code, out = invoke("test-connection", url=receiver.url)
    assert code == 1
    assert "status   401" in out and "REJECTED" in out and "STREAMER_WEBHOOK_SECRET" in out
    assert SECRET not in out


def test_no_receiver_is_reported_as_no_answer() -> None:
    receiver = Receiver(SECRET)  # never started
    code, out = invoke("test-connection", url=receiver.url)
    assert code == 1 and "no answer" in out and "cannot reach" in out


def test_help_shows_no_secret() -> None:
    for args in (["--help"], ["test-connection", "--help"]):
        code, out = invoke(*args, url="http://127.0.0.1:1/x")
        assert code == 0
        assert SECRET not in out and TOKEN not in out
