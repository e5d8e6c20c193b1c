"""A forwarder worker: the runtime's batch loop around the forward handler, built from settings."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from streamer.contract.codec import Codec
from streamer.contract.topics import TopicSettings
from streamer.errors import ConfigError
from streamer.forward.client import WebhookClient
from streamer.forward.handler import ForwardHandler
from streamer.forward.settings import ForwardSettings
from streamer.runtime.job import Sections
from streamer.runtime.retention import Pruning
from streamer.runtime.runner import Runner
from streamer.runtime.settings import KafkaSettings, RuntimeSettings

__all__ = ["BATCH_BUDGET_S", "WAVES_PER_BATCH", "batch_bound", "forward_runner"]

# A batch is delivered before the next poll: bound it so that a slow receiver (every
# request near the timeout) or a low rate limit cannot hold one past max.poll.interval.
WAVES_PER_BATCH = 16
BATCH_BUDGET_S = 30.0


def batch_bound(batch_max_events: int, s: ForwardSettings) -> int:
    """Events per runtime batch: at most ``WAVES_PER_BATCH`` rounds of requests in flight,
    and no more than the rate limit sends in ``BATCH_BUDGET_S``."""
    per_request = s.webhook_batch_max_events
    bound = WAVES_PER_BATCH * s.webhook_max_in_flight * per_request
    if s.webhook_rate_per_s > 0:
        bound = min(
            bound, max(per_request, int(s.webhook_rate_per_s * BATCH_BUDGET_S * per_request))
        )
    return max(1, min(batch_max_events, bound))


def forward_runner(
    sections: Sections,
    *,
    registry: CollectorRegistry | None = None,
    client: WebhookClient | None = None,
    install_signal_handlers: bool = True,
    pruning: Pruning | None = None,
) -> Runner[Any, Any, Any]:
    """One member of the forwarder's consumer group (``streamer forward``)."""
    forward = sections.section(ForwardSettings)
    if not forward.webhook_url:
        raise ConfigError("STREAMER_WEBHOOK_URL is not set: where should the forwarder deliver?")
    runtime = sections.section(RuntimeSettings)
    handler = ForwardHandler(
        forward,
        sections.section(TopicSettings),
        codec=Codec.for_registry(sections.section(KafkaSettings).schema_registry_url),
        failure_threshold=runtime.circuit_failure_threshold,
        client=client,
    )
    return Runner.of(
        handler,
        sections,
        group_id=forward.forward_group_id,
        runtime=runtime.model_copy(
            update={"batch_max_events": batch_bound(runtime.batch_max_events, forward)}
        ),
        registry=registry,
        install_signal_handlers=install_signal_handlers,
        pruning=pruning,
    )
