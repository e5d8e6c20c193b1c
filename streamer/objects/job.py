"""The object index, registered: ``streamer objects …``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from streamer.contract.topics import TopicSettings
from streamer.objects.settings import ObjectsSettings
from streamer.runtime.job import Job, Sections
from streamer.storage.settings import S3Settings

__all__ = ["JOB"]


def _topics(s: Sections) -> Sequence[str]:
    return (s.section(ObjectsSettings).objects_topic, s.section(TopicSettings).media_topic)


def _runner(s: Sections, **kw: Any) -> Any:
    from streamer.objects.worker import objects_runner

    return objects_runner(s, **kw)


JOB = Job(
    name="objects",
    sections=(ObjectsSettings, TopicSettings, S3Settings),
    migrations=("streamer.objectindex.sql",),
    topics=_topics,
    group_id=lambda s: s.section(ObjectsSettings).objects_group_id,
    runner=_runner,
    cli="streamer.cli.objects:register",
    summary="bucket notifications kept as an index; galleries of changed objects re-checked",
)
