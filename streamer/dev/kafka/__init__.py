"""Apache Kafka for the development stack and the tests, run from its Maven Central jars."""

from streamer.dev.kafka.cluster import (
    KafkaCluster,
    KafkaNode,
    KafkaSecurity,
    KafkaStartError,
    KafkaTls,
)
from streamer.dev.kafka.distribution import (
    DEFAULT_KAFKA_VERSION,
    KafkaDistribution,
    KafkaUnavailable,
)

__all__ = [
    "DEFAULT_KAFKA_VERSION",
    "KafkaCluster",
    "KafkaDistribution",
    "KafkaNode",
    "KafkaSecurity",
    "KafkaStartError",
    "KafkaTls",
    "KafkaUnavailable",
]
