"""The two S3 clients a replicator uses, built from settings (one client when the endpoint is shared)."""

from __future__ import annotations

from streamer.replicate.copier import Copier
from streamer.replicate.metrics import ReplicaMetrics
from streamer.replicate.settings import ReplicaSettings
from streamer.storage.clients import make_s3_client
from streamer.storage.settings import S3Settings

__all__ = ["make_copier"]


def make_copier(settings: ReplicaSettings, s3: S3Settings, metrics: ReplicaMetrics) -> Copier:
    pool = settings.replica_concurrency
    source = make_s3_client(
        s3.model_copy(update={"head_timeout_s": settings.replica_timeout_s}),
        max_pool_connections=pool,
    )
    replica = (
        source
        if settings.server_side
        else make_s3_client(settings.store(s3), max_pool_connections=pool)
    )
    return Copier(
        source,
        s3.s3_bucket,
        s3.s3_prefix,
        replica,
        settings.bucket(),
        settings.replica_prefix,
        server_side=settings.server_side,
        concurrency=pool,
        part_size_bytes=settings.replica_part_size_bytes,
        max_image_bytes=settings.replica_max_image_bytes,
        metrics=metrics,
        replica_names=settings.names(),
    )
