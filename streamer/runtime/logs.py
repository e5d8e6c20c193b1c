"""Logs a person or a log pipeline can read: ``STREAMER_LOG_FORMAT=text`` or ``json``.

Every module logs through the standard ``logging`` module; structlog renders the
records. In JSON every line carries the same fields (``job``, ``group``,
``topic``, ``partition``, ``offset``, ``sku``, ``reason``; null where they do not
apply) beside ``event`` (the message), ``level``, ``logger`` and ``timestamp``, so
a pipeline can index them without guessing. Call sites pass the fields with
``extra={...}``; the job and group are set once per process.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog

__all__ = ["FIELDS", "configure_logging", "set_process_fields"]

FIELDS = ("job", "group", "topic", "partition", "offset", "sku", "reason")
_process: dict[str, Any] = {}


def set_process_fields(**fields: Any) -> None:
    """Fields every line of this process carries (the job and consumer group it runs)."""
    _process.update({k: v for k, v in fields.items() if v is not None})


def _fill(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name in FIELDS:
        event.setdefault(name, _process.get(name))
    return event


def configure_logging(
    level: str = "INFO", fmt: Literal["text", "json"] = "text", stream: TextIO | None = None
) -> None:
    pre_chain: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(allow=FIELDS),
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
