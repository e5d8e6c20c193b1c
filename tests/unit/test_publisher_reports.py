"""A message produced with its own delivery callback reports to it, not to flush's account."""

from __future__ import annotations

import threading

import pytest
from confluent_kafka import KafkaError, KafkaException

from streamer.runtime.publisher import Publisher, fatal_error_of
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


class _Acked:
    """A delivery report's message, as librdkafka hands it to the callback."""

    def __init__(self, offset: int | None) -> None:
        self._offset = offset

    def topic(self) -> str:
        return "t"

    def key(self) -> bytes:
        return b"k"

    def partition(self) -> int:
        return 0

    def offset(self) -> int | None:
        return self._offset


def test_an_acknowledgment_without_an_offset_counts_as_delivered() -> None:
    """Found by the chaos campaign: just after a restart Tansu acknowledged produces without
    an offset, and the report raised inside flush(), failing a batch that was delivered."""
    publisher = Publisher(KafkaSettings(kafka_bootstrap="127.0.0.1:1"))
    publisher._pending = 3
    publisher._on_delivery(None, _Acked(None))
    publisher._on_delivery(None, _Acked(-1001))
    publisher._on_delivery(None, _Acked(41))
    publisher._tally()
    assert publisher._acked == 3 and publisher._failures == []
    assert publisher.end_offsets == {("t", 0): 42}


def test_a_delivery_callback_takes_no_lock() -> None:
    """Regression (found by the chaos campaign, seeds 6, 8 and 9): confluent-kafka may run a
    delivery callback while a fatal error's exception is still set on the thread; the first
    call inside the callback then raises after doing its work, and a lock it acquired was
    never released: every later report waited for it. The callbacks only append now."""
    publisher = Publisher(KafkaSettings(kafka_bootstrap="127.0.0.1:1"))
    publisher._pending = 2
    done = threading.Event()

    def deliver() -> None:
        publisher._on_delivery(None, _Acked(4))
        publisher._on_own_delivery(lambda _err, _msg: None, None, _Acked(9))
        done.set()

    with publisher._lock:  # as a leaked lock would be
        threading.Thread(target=deliver, daemon=True).start()
        assert done.wait(timeout=10), "a delivery callback waited for the publisher's lock"
    publisher._tally()  # what flush does with them, on its own thread
    assert (publisher._acked, publisher._failures, publisher._pending) == (1, [], 1)
    assert publisher.end_offsets == {("t", 0): 10}


def test_a_fatal_error_is_recognised_however_it_is_raised() -> None:
    fatal = KafkaError(KafkaError._FATAL, "unknown producer id", fatal=True)
    assert fatal_error_of(fatal) == "unknown producer id"
    assert fatal_error_of(KafkaException(fatal)) == "unknown producer id"
    over = SystemError("returned a result with an exception set")
    over.__cause__ = KafkaException(fatal)
    assert fatal_error_of(over) == "unknown producer id"
    assert fatal_error_of(KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT))) is None
    assert fatal_error_of(RuntimeError("no")) is None
