"""The consumer runtime every job runs on; it imports no job.

A job is a ``Handler`` (the steps: ``decode``, ``plan``, ``effects``, ``persist``; read
``handler.py``), registered by a ``Job`` descriptor; ``Runner`` runs it on a ``Source``
(a Kafka group member, ``KafkaSource``, or an SQS queue, ``SqsSource``) with the
guarantees of ``checkpoint`` (the commit order, written once), ``ownership`` (fenced
offsets), ``retry`` and ``circuit`` (outages), ``deadletters`` (bad input) and
``pipeline`` (the life of one batch, top to bottom). What a job may use is exported here;
README's "Writing a job" walks through it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamer.config import NonBlank, Section
    from streamer.errors import (
        ConfigError,
        DependencyUnavailable,
        NonRetriableError,
        RetriableError,
        StreamerError,
    )
    from streamer.runtime.checkpoint import Transaction
    from streamer.runtime.deadletters import DeadLetter
    from streamer.runtime.errors import StateChanged
    from streamer.runtime.handler import (
        Batch,
        Handler,
        HandlerBase,
        HandlerContext,
        Output,
        OutputMessage,
        SimpleHandler,
        TopicPartition,
    )
    from streamer.runtime.job import Job, Sections
    from streamer.runtime.kafka_source import KafkaSource
    from streamer.runtime.migrations import migrate
    from streamer.runtime.retention import Pruning, Retention
    from streamer.runtime.runner import Runner, RunnerStats
    from streamer.runtime.settings import DatabaseSettings, KafkaSettings, RuntimeSettings
    from streamer.runtime.source import Source
    from streamer.runtime.sqs_source import SqsSource

__all__ = [
    "Batch",
    "ConfigError",
    "DatabaseSettings",
    "DeadLetter",
    "DependencyUnavailable",
    "Handler",
    "HandlerBase",
    "HandlerContext",
    "Job",
    "KafkaSettings",
    "KafkaSource",
    "NonBlank",
    "NonRetriableError",
    "Output",
    "OutputMessage",
    "Pruning",
    "Retention",
    "RetriableError",
    "Runner",
    "RunnerStats",
    "RuntimeSettings",
    "Section",
    "Sections",
    "SimpleHandler",
    "Source",
    "SqsSource",
    "StateChanged",
    "StreamerError",
    "TopicPartition",
    "Transaction",
    "migrate",
]

# Imported when first used: a command that needs one runtime module does not import them all.
_HOMES = {
    "NonBlank": "streamer.config",
    "Section": "streamer.config",
    "migrate": "streamer.runtime.migrations",
    "Batch": "streamer.runtime.handler",
    "ConfigError": "streamer.errors",
    "DatabaseSettings": "streamer.runtime.settings",
    "DeadLetter": "streamer.runtime.deadletters",
    "DependencyUnavailable": "streamer.errors",
    "Handler": "streamer.runtime.handler",
    "HandlerBase": "streamer.runtime.handler",
    "HandlerContext": "streamer.runtime.handler",
    "Job": "streamer.runtime.job",
    "KafkaSettings": "streamer.runtime.settings",
    "KafkaSource": "streamer.runtime.kafka_source",
    "NonRetriableError": "streamer.errors",
    "Output": "streamer.runtime.handler",
    "OutputMessage": "streamer.runtime.handler",
    "Pruning": "streamer.runtime.retention",
    "Retention": "streamer.runtime.retention",
    "RetriableError": "streamer.errors",
    "Runner": "streamer.runtime.runner",
    "RunnerStats": "streamer.runtime.runner",
    "RuntimeSettings": "streamer.runtime.settings",
    "Sections": "streamer.runtime.job",
    "SimpleHandler": "streamer.runtime.handler",
    "Source": "streamer.runtime.source",
    "SqsSource": "streamer.runtime.sqs_source",
    "StateChanged": "streamer.runtime.errors",
    "StreamerError": "streamer.errors",
    "TopicPartition": "streamer.runtime.handler",
    "Transaction": "streamer.runtime.checkpoint",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
