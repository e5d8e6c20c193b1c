"""What each job's consumer group is doing, read live: members from the broker, positions
from PostgreSQL (the fenced offsets every job commits there), ends from the broker.

The console's jobs page and its samples read this. Jobs are named here by what the
settings say of them (group id, topics), so nothing here imports a job.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from streamer.runtime.database import connect
from streamer.runtime.errors import BrokerUnavailable
from streamer.settings import Settings

__all__ = ["JobSpec", "JobView", "Member", "PartitionView", "describe_jobs", "job_specs"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSpec:
    name: str
    command: str
    group_id: str
    topics: tuple[str, ...]
    source: str  # what it reads, for a person


@dataclass
class Member:
    member_id: str
    client_id: str
    host: str
    partitions: list[str] = field(default_factory=list)


@dataclass
class PartitionView:
    topic: str
    partition: int
    end: int | None
    committed: int | None
    lag: int | None
    owner: str | None
    updated_at: Any = None


@dataclass
class JobView:
    spec: JobSpec
    state: str
    members: list[Member]
    partitions: list[PartitionView]
    error: str | None = None

    @property
    def lag(self) -> int:
        return sum(p.lag or 0 for p in self.partitions)

    @property
    def owners(self) -> dict[str, list[str]]:
        """Which worker holds which partitions, by the claims in PostgreSQL (the runtime's
        own record; a worker that stopped keeps its claims until another takes them)."""
        out: dict[str, list[str]] = {}
        for p in self.partitions:
            if p.owner:
                out.setdefault(p.owner, []).append(f"{p.topic}[{p.partition}]")
        return out

    @property
    def committed(self) -> int:
        return sum(p.committed or 0 for p in self.partitions)


def job_specs(settings: Settings) -> list[JobSpec]:
    """The consumer jobs and what they read, from the settings."""
    t = settings.topics
    objects_source = (
        f"SQS {settings.objects.objects_sqs_url}"
        if settings.objects.objects_sqs_url
        else settings.objects.objects_topic
    )
    return [
        JobSpec(
            "gallery sync",
            "streamer consume",
            settings.gallery.group_id,
            (t.product_topic, t.media_topic),
            f"{t.product_topic}, {t.media_topic}",
        ),
        JobSpec(
            "webhook forwarder",
            "streamer forward",
            settings.forward.forward_group_id,
            (t.outcome_topic,),
            t.outcome_topic,
        ),
        JobSpec(
            "replicator",
            "streamer replicate",
            settings.replica.replica_group_id,
            (t.outcome_topic,),
            t.outcome_topic,
        ),
        JobSpec(
            "object index",
            "streamer objects consume",
            settings.objects.objects_group_id,
            () if settings.objects.objects_sqs_url else (settings.objects.objects_topic,),
            objects_source,
        ),
    ]


def _broker(
    settings: Settings, specs: list[JobSpec], timeout_s: float
) -> tuple[dict[tuple[str, int], int], dict[str, tuple[str, list[Member]]]]:
    """Partition ends of every topic the jobs read, and each group's state and members."""
    admin = AdminClient(settings.kafka.client_config())
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise BrokerUnavailable(
            f"cannot reach Kafka at {settings.kafka.kafka_bootstrap}: {exc.args[0]}"
        ) from exc
    wanted = {
        TopicPartition(topic, p): OffsetSpec.latest()  # type: ignore[no-untyped-call]
        for spec in specs
        for topic in spec.topics
        if topic in metadata.topics
        for p in metadata.topics[topic].partitions
    }
    ends: dict[tuple[str, int], int] = {}
    if wanted:
        for tp, future in admin.list_offsets(wanted, request_timeout=timeout_s).items():
            try:
                ends[(tp.topic, tp.partition)] = future.result().offset
            except KafkaException as exc:
                log.debug("end offset of %s[%d]: %s", tp.topic, tp.partition, exc)
    groups: dict[str, tuple[str, list[Member]]] = {}
    ids = sorted({s.group_id for s in specs})
    for group_id, future in admin.describe_consumer_groups(ids, request_timeout=timeout_s).items():
        try:
            described = future.result()
        except KafkaException as exc:
            groups[group_id] = (f"unknown ({exc.args[0].str()})", [])
            continue
        members = [
            Member(
                m.member_id,
                m.client_id,
                m.host,
                sorted(
                    f"{tp.topic}[{tp.partition}]"
                    for tp in (m.assignment.topic_partitions if m.assignment else [])
                ),
            )
            for m in described.members
        ]
        state = getattr(described.state, "name", str(described.state)).lower()
        groups[group_id] = (state, members)
    return ends, groups


async def _positions(
    dsn: str, groups: list[str]
) -> dict[tuple[str, str, int], tuple[int, str | None, Any]]:
    async with connect(dsn) as conn:
        rows = await conn.fetch(
            "SELECT group_id, topic, partition, next_offset, owner, updated_at"
            " FROM consumer_offsets WHERE group_id = ANY($1::text[])",
            groups,
        )
    return {
        (r["group_id"], r["topic"], r["partition"]): (r["next_offset"], r["owner"], r["updated_at"])
        for r in rows
    }


async def describe_jobs(settings: Settings, *, timeout_s: float = 5.0) -> list[JobView]:
    """Every job's group, members, partitions and lag, as of now."""
    import asyncio

    specs = job_specs(settings)
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    ends, groups = await loop.run_in_executor(None, _broker, settings, specs, timeout_s)
    positions = await _positions(settings.database.dsn, sorted({s.group_id for s in specs}))
    views = []
    for spec in specs:
        partitions = []
        keys = sorted(
            {(t, p) for (t, p) in ends if t in spec.topics}
            | {(t, p) for (g, t, p) in positions if g == spec.group_id}
        )
        for topic, partition in keys:
            end = ends.get((topic, partition))
            next_offset, owner, updated_at = positions.get(
                (spec.group_id, topic, partition), (-1, None, None)
            )
            committed = next_offset if next_offset >= 0 else None
            lag = None if end is None else max(0, end - (committed or 0))
            partitions.append(
                PartitionView(topic, partition, end, committed, lag, owner, updated_at)
            )
        state, members = groups.get(spec.group_id, ("unknown", []))
        views.append(JobView(spec, state, members, partitions))
    log.debug("jobs described in %.3fs", time.monotonic() - started)
    return views
