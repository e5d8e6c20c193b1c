"""The webhook forwarder, registered: ``streamer forward``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from streamer.contract.topics import TopicSettings
from streamer.forward.settings import ForwardSettings
from streamer.runtime.job import Job, Sections

__all__ = ["JOB"]


def _topics(s: Sections) -> Sequence[str]:
    return (s.section(TopicSettings).outcome_topic,)


def _runner(s: Sections, **kw: Any) -> Any:
    from streamer.forward.worker import forward_runner

    return forward_runner(s, **kw)


JOB = Job(
    name="forward",
    sections=(ForwardSettings, TopicSettings),
    topics=_topics,
    group_id=lambda s: s.section(ForwardSettings).forward_group_id,
    runner=_runner,
    cli="streamer.cli.forward:register",
    summary="GalleryUpdated out to an HTTP receiver, signed and idempotent",
)
