"""How completions are published: the relay's delivery bound (also its takeover fence)."""

from __future__ import annotations

from pydantic import Field

from streamer.config import Section

__all__ = ["TrackingSettings"]


class TrackingSettings(Section):
    completion_delivery_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="bound on one ImportCompleted delivery; a new relay leader waits this long "
        "(plus a second) before reading its topic back, so nothing an old leader sent lands later",
    )
    completion_poll_interval_s: float = Field(
        1.0, gt=0, description="how often the relay looks for complete bulks without a wake-up"
    )
