"""The replicator, registered: ``streamer replicate``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from streamer.contract.topics import TopicSettings
from streamer.replicate.settings import ReplicaSettings
from streamer.runtime.job import Job, Sections
from streamer.storage.settings import S3Settings

__all__ = ["JOB"]


def _topics(s: Sections) -> Sequence[str]:
    return (s.section(TopicSettings).outcome_topic,)


def _runner(s: Sections, **kw: Any) -> Any:
    from streamer.replicate.worker import replicate_runner

    return replicate_runner(s, **kw)


JOB = Job(
    name="replicate",
    sections=(ReplicaSettings, TopicSettings, S3Settings),
    migrations=("streamer.replicate.sql",),
    topics=_topics,
    group_id=lambda s: s.section(ReplicaSettings).replica_group_id,
    runner=_runner,
    cli="streamer.cli.replicate:register",
    summary="the images of changed galleries copied to another store",
)
