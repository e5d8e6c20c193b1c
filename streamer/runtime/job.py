"""A job, registered once: what the command line, ``db migrate``, ``topics create`` and the
layering contract read.

A job package holds a ``job.py`` with its ``JOB = Job(...)``; ``streamer.jobs`` lists them,
one line each. From the descriptor:

- the CLI mounts the job's command group (``cli``: "module:attribute", imported only when
  a command of the job runs) and loads only the settings sections its commands read
  (``sections``);
- ``db migrate`` applies its migrations (``migrations``: packages of SQL files, after the
  runtime's own);
- ``topics create`` makes its topics (``topics``, from its settings);
- the worker of ``streamer <job>`` is built by ``runner``, in the job's own consumer group
  (``group_id``; a job that names none gets ``streamer-<name>``, never another job's).

Jobs read their settings through ``Sections`` (``sections.section(GallerySettings)``), so a
job imports no other job's settings and no aggregate of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from streamer.config import Section

__all__ = ["Job", "Sections"]

S = TypeVar("S", bound=Section)


class Sections(Protocol):
    """Settings by section, each loaded and validated the first time it is asked for."""

    def section(self, kind: type[S]) -> S: ...


def _no_topics(_sections: Sections) -> Sequence[str]:
    return ()


@dataclass(frozen=True)
class Job:
    name: str
    # The sections the job's commands read: its own first, then what it shares (Kafka,
    # PostgreSQL and the runtime's are always read).
    sections: tuple[type[Section], ...] = ()
    migrations: tuple[str, ...] = ()
    topics: Callable[[Sections], Sequence[str]] = _no_topics
    group_id: Callable[[Sections], str] | None = None
    # Builds one worker (``streamer.runtime.Runner``) from settings; None for a job that
    # consumes nothing (the HTTP intake).
    runner: Callable[..., Any] | None = None
    # "module:attribute" of the job's typer app (a command group) or command function.
    cli: str | None = None
    cli_name: str | None = None  # the command's name, if not the job's
    summary: str = ""

    def group(self, sections: Sections) -> str:
        return self.group_id(sections) if self.group_id is not None else f"streamer-{self.name}"

    @property
    def command(self) -> str:
        return self.cli_name or self.name
