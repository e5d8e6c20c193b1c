"""A message produced with its own delivery callback reports to it, not to flush's account."""

from __future__ import annotations

import threading

import pytest
from confluent_kafka import KafkaError, KafkaException

from streamer.errors import DeliveryUnavailable
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
    assert publisher._acked == 3 and publisher._failures == []
    assert publisher.end_offsets == {("t", 0): 42}


class _Producer:
    """A stand-in for librdkafka's producer. A fatal idempotence error (the broker losing
    track of a producer's sequence numbers) cannot be provoked on demand from a real broker
    here; the chaos campaign met one from Tansu (seed 6). The first instance hits it on its
    first flush (or on produce, with ``refuse``); every later one delivers."""

    made: list[_Producer] = []
    refuse = False

    def __init__(self, config: dict[str, object]) -> None:
        self.config = config
        self.fatal = not _Producer.made
        self.queued: list[object] = []
        _Producer.made.append(self)

    def produce(self, _topic: str, _value: bytes, _key: bytes, on_delivery: object) -> None:
        if self.fatal and _Producer.refuse:
            raise KafkaException(KafkaError(KafkaError._FATAL, "fenced", fatal=True))
        self.queued.append(on_delivery)

    def poll(self, _timeout: float) -> int:
        return 0

    def purge(self) -> None:
        pass

    def flush(self, _timeout: float = 0) -> int:
        queued, self.queued = self.queued, []
        if self.fatal:
            error = KafkaError(KafkaError._FATAL, "out of order sequence number", fatal=True)
            self.config["error_cb"](error)  # type: ignore[operator]
            for report in queued:
                report(KafkaError(KafkaError._FATAL, "fatal"), _Acked(None))  # type: ignore[operator]
        else:
            for report in queued:
                report(None, _Acked(7))  # type: ignore[operator]
        return 0


@pytest.mark.parametrize("on_produce", [False, True])
def test_a_producer_that_hit_a_fatal_error_is_replaced(
    monkeypatch: pytest.MonkeyPatch, on_produce: bool
) -> None:
    """Regression (found by the chaos campaign, seed 6): Tansu answered an idempotent produce
    with an out-of-order sequence number, a fatal error after which librdkafka refuses every
    message of that producer. The worker retried its batch on it forever, its transaction
    (and the SKUs' row locks) open, its partitions stalled. Now the producer is replaced and
    the undelivered messages fail as retriable: the caller's retry sends them on the new one."""
    monkeypatch.setattr("streamer.runtime.publisher.Producer", _Producer)
    monkeypatch.setattr(_Producer, "made", [])
    monkeypatch.setattr(_Producer, "refuse", on_produce)
    with Publisher(KafkaSettings(kafka_bootstrap="127.0.0.1:1")) as publisher:
        publisher.produce("t", b"v", key=b"k")
        if not on_produce:
            with pytest.raises(DeliveryUnavailable, match="fatal error and was replaced"):
                publisher.flush()
            assert publisher.renewals == 1
            publisher.produce("t", b"v", key=b"k")  # the caller's retry
        assert publisher.flush() == 1
        assert publisher.renewals == 1 and len(_Producer.made) == 2
        assert publisher.end_offsets == {("t", 0): 8}
