"""The gallery sync, registered: ``streamer consume`` and ``streamer gallery …``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from streamer.contract.topics import TopicSettings
from streamer.gallery.settings import GallerySettings
from streamer.runtime.job import Job, Sections
from streamer.storage.settings import S3Settings
from streamer.tracking.settings import TrackingSettings

__all__ = ["JOB"]


def _topics(s: Sections) -> Sequence[str]:
    t = s.section(TopicSettings)
    return (t.product_topic, t.media_topic, t.outcome_topic)


def _runner(s: Sections, **kw: Any) -> Any:
    from streamer.gallery.worker import gallery_runner

    return gallery_runner(s, **kw)


JOB = Job(
    name="gallery",
    sections=(GallerySettings, TopicSettings, S3Settings, TrackingSettings),
    migrations=("streamer.gallery.sql", "streamer.tracking.sql", "streamer.objectindex.sql"),
    topics=_topics,
    group_id=lambda s: s.section(GallerySettings).group_id,
    runner=_runner,
    cli="streamer.cli.gallery:register",
    cli_name="consume",
    summary="product and media events in, ETag-checked galleries and GalleryUpdated out",
)
