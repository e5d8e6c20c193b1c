"""Every job of streamer, one line each: what the CLI, ``db migrate`` and ``topics create``
go through. A new job writes its ``job.py`` (``streamer.runtime.job.Job``) and adds it here.

``streamer serve`` is no job (it consumes nothing): the HTTP face, mounted by the CLI like
the tools; its tables are listed here beside the jobs' so ``db migrate`` makes them too.
"""

from __future__ import annotations

from streamer.forward.job import JOB as FORWARD
from streamer.gallery.job import JOB as GALLERY
from streamer.objects.job import JOB as OBJECTS
from streamer.replicate.job import JOB as REPLICATE
from streamer.runtime.job import Job

__all__ = ["JOBS", "job", "migrations"]

JOBS: tuple[Job, ...] = (GALLERY, FORWARD, REPLICATE, OBJECTS)
# Tables of what is no job: the intake's bulks and completions, its idempotency keys.
_FACES = ("streamer.tracking.sql", "streamer.api.sql")


def job(name: str) -> Job:
    return next(j for j in JOBS if j.name == name)


def migrations() -> tuple[str, ...]:
    """Every migration package after the runtime's own, each once, in the order named."""
    return tuple(dict.fromkeys([*(p for j in JOBS for p in j.migrations), *_FACES]))
