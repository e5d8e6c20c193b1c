"""A forwarder worker: the runtime's batch loop around the forward handler, built from settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from streamer.contract.codec import Codec
from streamer.forward.client import WebhookClient
from streamer.forward.handler import ForwardHandler, ForwardPlan
from streamer.forward.settings import ForwardSettings
from streamer.runtime.health import Readiness
from streamer.runtime.retention import Pruning
from streamer.runtime.runner import Runner

if TYPE_CHECKING:
    from streamer.settings import Settings

__all__ = ["BATCH_BUDGET_S", "WAVES_PER_BATCH", "ForwardWorker", "batch_bound"]

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


class ForwardWorker(Runner[ForwardPlan]):
    """One member of the forwarder's consumer group (``streamer forward``)."""

    handler: ForwardHandler

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        client: WebhookClient | None = None,
        install_signal_handlers: bool = True,
        pruning: Pruning | None = None,
    ) -> None:
        forward = settings.forward
        if not forward.webhook_url:
            from streamer.errors import ConfigError

            raise ConfigError(
                "STREAMER_WEBHOOK_URL is not set: where should the forwarder deliver?"
            )
        handler = ForwardHandler(
            forward,
            settings.topics,
            codec=Codec.for_registry(settings.kafka.schema_registry_url),
            failure_threshold=settings.runtime.circuit_failure_threshold,
            client=client,
        )
        runtime = settings.runtime.model_copy(
            update={"batch_max_events": batch_bound(settings.runtime.batch_max_events, forward)}
        )
        super().__init__(
            handler,
            kafka=settings.kafka,
            database=settings.database,
            runtime=runtime,
            registry=registry,
            install_signal_handlers=install_signal_handlers,
            pruning=pruning,
        )

    def readiness(self) -> Readiness:
        ready = super().readiness()
        if self.handler.disabled is None:
            return ready
        return Readiness(ready=False, reasons=(*ready.reasons, self.handler.disabled))
