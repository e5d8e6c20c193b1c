"""A message produced with its own delivery callback reports to it, not to flush's account."""

from __future__ import annotations

import threading

import pytest

from streamer.runtime.publisher import Publisher
from streamer.runtime.settings import KafkaSettings

pytestmark = pytest.mark.unit


def test_own_delivery_reports_go_to_their_callback() -> None:
    # No broker: port 1 refuses connections, so the message times out and reports a failure.
    settings = KafkaSettings(kafka_bootstrap="127.0.0.1:1", delivery_timeout_ms=1000)
    reports: list[str | None] = []
    done = threading.Event()

    def report(err, _msg) -> None:
        reports.append(None if err is None else err.str())
        done.set()

    with Publisher(settings) as publisher:
        publisher.produce("t", b"v", key=b"k", on_delivery=report)
        deadline = 30
        while not done.is_set() and deadline > 0:
            publisher.producer.poll(0.1)
            deadline -= 0.1
        assert reports and reports[0] is not None and "timed out" in reports[0].lower()
        assert publisher.flush(timeout_s=1) == 0, "flush has no failure of its own to raise"
