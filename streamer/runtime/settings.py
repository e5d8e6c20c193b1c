"""The runtime's settings: Kafka, PostgreSQL, and how a consumer batches, retries and stops."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from streamer.config import NonBlank, Section
from streamer.runtime.logs import kafka_client_logger

__all__ = ["DatabaseSettings", "KafkaSettings", "RuntimeSettings"]

_SECRET_PROPERTIES = ("password", "secret", "key.password", "sasl.oauthbearer.config")


class KafkaSettings(Section):
    kafka_bootstrap: NonBlank = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    kafka: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="librdkafka properties passed through (SASL, TLS, ...)",
    )
    schema_registry_url: str | None = Field(
        None, description="Schema Registry URL; unset means Avro single-object encoding"
    )
    topic_partitions: int = Field(12, ge=1)
    topic_replication_factor: int | None = Field(
        None, ge=1, description="unset: the broker's default.replication.factor"
    )
    fetch_wait_max_ms: int = Field(100, ge=1, description="10 against the Tansu dev broker")
    group_protocol: Literal["classic", "consumer"] = Field(
        "classic",
        description="consumer: KIP-848's protocol (Apache Kafka 4.0+); the broker then owns "
        "the session timeout (group.consumer.session.timeout.ms)",
    )
    partition_assignor: Literal["range", "cooperative-sticky", "uniform"] = Field(
        "range",
        description="range: partition p of every topic a job reads goes to the same member "
        "(co-partitioned: a SKU's product and media events meet in one worker) and each "
        "topic's partitions are spread evenly; cooperative-sticky (classic) and uniform "
        "(consumer) balance partition counts, not topics",
    )
    session_timeout_ms: int = Field(45000, ge=1000)
    max_poll_interval_ms: int = Field(300000, ge=1000)
    delivery_timeout_ms: int = Field(30000, ge=1000)

    def properties(self) -> dict[str, str]:
        """Pass-through properties in librdkafka's dotted names (values are kept secret here)."""
        return {
            key.lower().replace("_", "."): value.get_secret_value()
            for key, value in self.kafka.items()
        }

    @model_validator(mode="after")
    def _assignor_of_its_protocol(self) -> KafkaSettings:
        allowed = {"classic": ("range", "cooperative-sticky"), "consumer": ("range", "uniform")}
        if self.partition_assignor not in allowed[self.group_protocol]:
            raise ValueError(
                f"STREAMER_PARTITION_ASSIGNOR={self.partition_assignor} is not an assignor of "
                f"STREAMER_GROUP_PROTOCOL={self.group_protocol} (it takes "
                f"{' or '.join(allowed[self.group_protocol])})"
            )
        return self

    def group_config(self, group_id: str) -> dict[str, Any]:
        """A group member's settings. Under KIP-848 (``consumer``) the broker assigns
        partitions and keeps the session: librdkafka refuses the classic protocol's session,
        heartbeat and client-side assignor settings there.

        Why ``range`` by default: with members joining one by one (a deployment rolling out,
        a scale-out), ``cooperative-sticky`` and ``uniform`` balance partition counts and
        handed one member every media partition and the other every product partition
        (measured on Kafka 4.1, 12 + 12 partitions: the second worker idled); ``range``
        gives each member the same slice of every topic."""
        if self.group_protocol == "consumer":
            return {
                "group.id": group_id,
                "group.protocol": "consumer",
                "group.remote.assignor": self.partition_assignor,
            }
        return {
            "group.id": group_id,
            "partition.assignment.strategy": self.partition_assignor,
            "session.timeout.ms": self.session_timeout_ms,
            "heartbeat.interval.ms": max(100, self.session_timeout_ms // 6),
        }

    def client_config(self, **extra: Any) -> dict[str, Any]:
        """librdkafka configuration shared by producers, consumers and the admin client."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.kafka_bootstrap,
            # librdkafka's lines go through our logging (STREAMER_LOG_FORMAT), rate-limited,
            # instead of raw to stderr.
            "logger": kafka_client_logger(),
        }
        config.update(self.properties())
        config.update(extra)
        return config


class DatabaseSettings(Section):
    database_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/streamer")
    database_pool_size: int = Field(4, ge=1)
    database_timeout_s: float = Field(10.0, gt=0)

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr) -> SecretStr:
        """A malformed URL is named here, once, instead of failing deep inside asyncpg with a
        traceback. The messages never repeat the URL: it may carry a password."""
        try:
            parts = urlsplit(value.get_secret_value())
            if "," not in parts.netloc:  # several hosts (libpq's failover list) parse apart
                _ = parts.port  # raises on a port that is not a number or out of range
        except ValueError as exc:
            raise ValueError(f"not a PostgreSQL URL: {exc}") from None
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL")
        return value

    @property
    def dsn(self) -> str:
        return self.database_url.get_secret_value()


class RuntimeSettings(Section):
    dlq_topic: str = "catalog.gallery.dlq"
    dlq_max_value_bytes: int = Field(
        900_000, ge=1024, description="larger originals are cut, with size and SHA-256 in headers"
    )
    batch_max_events: int = Field(2000, ge=1)
    batch_max_wait_ms: int = Field(200, ge=0)
    retry_initial_backoff_ms: int = Field(300, ge=1)
    retry_max_backoff_ms: int = Field(30000, ge=1)
    retry_max_attempts: int = Field(5, ge=1)
    circuit_failure_threshold: int = Field(3, ge=1)
    circuit_reset_timeout_s: float = Field(2.0, gt=0)
    metrics_host: str = "0.0.0.0"  # noqa: S104 - scraped from outside the pod
    metrics_port: int = Field(9400, ge=0, le=65535, description="0 disables the HTTP server")
    lag_refresh_s: float = Field(5.0, gt=0)
    shutdown_grace_s: float = Field(25.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
