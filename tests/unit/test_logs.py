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
    configure_logging("INFO", fmt, stream=out)  # type: ignore[arg-type]
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
        assert set(FIELDS) <= set(line), line
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
