"""Log lines: the same fields everywhere in JSON, and tracebacks that never show local variables."""

from __future__ import annotations

import io
import json
import logging

import pytest

from streamer.runtime.logs import FIELDS, configure_logging, set_process_fields

pytestmark = pytest.mark.unit


def emit(fmt: str) -> str:
    out = io.StringIO()
    configure_logging("INFO", fmt, stream=out, fields=("sku",))  # type: ignore[arg-type]
    set_process_fields(job="gallery", group="g1")
    log = logging.getLogger("streamer.test")
    log.info("dead-lettered: x", extra={"topic": "t", "partition": 3, "offset": 9, "sku": "S"})
    dsn = "postgresql://user:hunter2-secret@db/streamer"  # noqa: F841 - a local the traceback must not show
    try:
        raise ConnectionError("PostgreSQL unavailable")
    except ConnectionError:
        log.warning("retrying", exc_info=True)
    return out.getvalue()


def test_json_lines_carry_the_same_fields_every_time() -> None:
    lines = [json.loads(line) for line in emit("json").splitlines() if line.startswith("{")]
    assert len(lines) == 2
    for line in lines:
        assert {*FIELDS, "sku"} <= set(line), line
        assert line["job"] == "gallery" and line["group"] == "g1"
    assert (lines[0]["topic"], lines[0]["partition"], lines[0]["offset"], lines[0]["sku"]) == (
        "t", 3, 9, "S",
    )  # fmt: skip
    assert lines[1]["reason"] is None and "ConnectionError" in lines[1]["exception"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_traceback_never_shows_local_variables(fmt: str) -> None:
    text = emit(fmt)
    assert "ConnectionError" in text
    assert "hunter2-secret" not in text


def test_librdkafka_lines_are_one_sentence_and_rate_limited() -> None:
    """With the broker down librdkafka logs a line per attempt (503 in 25 s were seen, raw on
    stderr); through our logger each kind passes once a window, saying what it means."""
    from confluent_kafka import Producer

    from streamer.runtime.logs import _KafkaClientLogs

    now = [0.0]
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("streamer.test.kafka")
    logger.handlers, logger.propagate = [Keep()], False
    logger.filters = [_KafkaClientLogs(window_s=60, clock=lambda: now[0])]
    line = (
        "FAIL",
        "rdkafka#producer-1",
        "[thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: "
        "Connection refused (after 0ms in state CONNECT)",
    )
    for second in range(120):
        now[0] = float(second)
        logger.error("%s [%s] %s", *line)
    assert len(records) == 2, [r.getMessage() for r in records]
    assert records[0].getMessage() == (
        "cannot reach the Kafka broker 127.0.0.1:1: Connection refused; the client keeps retrying"
    )
    assert records[0].levelname == "WARNING"
    assert "(59 more like this in the last 60 s)" in records[1].getMessage()

    # A real client, through the logger its configuration names.
    records.clear()
    logger.filters = [_KafkaClientLogs(window_s=60)]
    producer = Producer({"bootstrap.servers": "127.0.0.1:1", "logger": logger})
    producer.poll(1.5)
    assert records and all(
        "cannot reach the Kafka broker 127.0.0.1:1" in r.getMessage() for r in records
    )
    assert len(records) <= 2
