"""Apicurio Registry for the tests: a real Schema Registry (Confluent's API), run from Maven
Central."""

from streamer.dev.apicurio.distribution import (
    DEFAULT_APICURIO_VERSION,
    ApicurioDistribution,
    ApicurioUnavailable,
)
from streamer.dev.apicurio.server import CCOMPAT_PATH, ApicurioRegistry

__all__ = [
    "CCOMPAT_PATH",
    "DEFAULT_APICURIO_VERSION",
    "ApicurioDistribution",
    "ApicurioRegistry",
    "ApicurioUnavailable",
]
