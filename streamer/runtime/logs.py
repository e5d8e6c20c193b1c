"""Logs a person or a log pipeline can read: ``STREAMER_LOG_FORMAT=text`` or ``json``.

Every module logs through the standard ``logging`` module; structlog renders the
records. In JSON every line carries the same fields (the runtime's ``job``, ``group``,
``topic``, ``partition``, ``offset``, ``key``, ``reason``, ``trace_id``, ``span_id``, and
those the product adds when it configures logging, e.g. ``sku``; null where they do not
apply) beside ``event`` (the message), ``level``, ``logger`` and ``timestamp``, so a
pipeline can index them without guessing. Call sites pass the fields with
``extra={...}``; the job and group are set once per process; the trace and span ids are
those of the current span while tracing is on (a text line shows them only then).
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog

from streamer.runtime import tracing

__all__ = [
    "FIELDS",
    "KAFKA_CLIENT_LOGGER",
    "configure_logging",
    "kafka_client_logger",
    "log_fields",
    "set_process_fields",
]

FIELDS = ("job", "group", "topic", "partition", "offset", "key", "reason", "trace_id", "span_id")
_fields: list[str] = list(FIELDS)
_process: dict[str, Any] = {}


def log_fields() -> tuple[str, ...]:
    """Every field a line carries: the runtime's and those added by ``configure_logging``."""
    return tuple(_fields)


def set_process_fields(**fields: Any) -> None:
    """Fields every line of this process carries (the job and consumer group it runs)."""
    _process.update({k: v for k, v in fields.items() if v is not None})


def _fill(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name in _fields:
        event.setdefault(name, _process.get(name))
    return event


def _trace_ids(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    ids = tracing.current_ids()
    if ids is not None:
        event["trace_id"], event["span_id"] = ids
    return event


def configure_logging(
    level: str = "INFO",
    fmt: Literal["text", "json"] = "text",
    stream: TextIO | None = None,
    *,
    fields: tuple[str, ...] = (),
) -> None:
    """``fields``: what the product adds to the runtime's ``FIELDS`` (``sku``, say)."""
    _fields[:] = [*FIELDS, *(f for f in fields if f not in FIELDS)]
    pre_chain: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(allow=tuple(_fields)),
        _trace_ids,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        rendering: list[Any] = [
            _fill,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]
    else:
        # Plain tracebacks: rich's would print local variables, and a local can be a DSN
        # with its password.
        rendering = [
            structlog.dev.ConsoleRenderer(
                colors=False, pad_event_to=0, exception_formatter=structlog.dev.plain_traceback
            )
        ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre_chain,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
    )
    handler = _Handler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _Handler)] + [handler]
    root.setLevel(level)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is when a record is emitted (tests swap it), unless
    given a stream; configuring again replaces this handler and leaves others alone."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__(stream)
        self._fixed = stream

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = self._fixed or sys.stderr
        super().emit(record)


# -- librdkafka's own logs ---------------------------------------------------------------

KAFKA_CLIENT_LOGGER = "streamer.kafka.client"
_THREAD = re.compile(r"^\[thrd:[^\]]*\]:\s*")
_UNREACHABLE = re.compile(
    r"^(?P<broker>\S+?)(?:/(?:bootstrap|\d+))?: Connect to \S+ failed: (?P<cause>.+?)"
    r"(?: \(after \d+ms in state \w+\))?(?:\s*\(\d+ identical error\(s\) suppressed\))?$"
)


class _KafkaClientLogs(logging.Filter):
    """librdkafka's lines through our logger, readable and rate-limited.

    A broker that is down makes librdkafka log a line per connection attempt (hundreds a
    minute, from every client of the process). Each kind of line (its facility and text
    with numbers left out) is let through once, then at most once per ``window_s`` with
    the number left out meanwhile. A failed connection becomes one sentence naming the
    broker it could not reach.
    """

    def __init__(self, window_s: float = 60.0, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.window_s = window_s
        self.clock = clock
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) != 3:
            return True
        facility, client, text = (str(a) for a in args)
        text = _THREAD.sub("", text)
        key = (facility, re.sub(r"\d+", "#", text))
        now = self.clock()
        with self._lock:
            last, suppressed = self._seen.get(key, (None, 0))
            if last is not None and now - last < self.window_s:
                self._seen[key] = (last, suppressed + 1)
                return False
            self._seen[key] = (now, 0)
        more = (
            f" ({suppressed} more like this in the last {self.window_s:.0f} s)"
            if suppressed
            else ""
        )
        unreachable = _UNREACHABLE.match(text)
        if unreachable:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = "cannot reach the Kafka broker %s: %s; the client keeps retrying%s"
            record.args = (unreachable["broker"], unreachable["cause"], more)
        else:
            record.msg = "kafka client %s: %s%s"
            record.args = (facility, text, more)
        del client
        return True


def kafka_client_logger() -> logging.Logger:
    """The logger librdkafka writes to (confluent-kafka's ``logger`` setting), filtered once."""
    logger = logging.getLogger(KAFKA_CLIENT_LOGGER)
    if not any(isinstance(f, _KafkaClientLogs) for f in logger.filters):
        logger.addFilter(_KafkaClientLogs())
    return logger
