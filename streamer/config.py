"""Settings, read once at the edge (the CLI) and passed inward.

Every setting comes from a flag, a ``STREAMER_*`` environment variable, or the
file that ``streamer dev up`` writes (in that order of precedence). Bad values
fail at start with a message naming the setting. Any further librdkafka
property passes through as ``STREAMER_KAFKA__<PROPERTY>`` with dots written as
single underscores, e.g. ``STREAMER_KAFKA__SASL_MECHANISM=PLAIN``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamer.errors import ConfigError

__all__ = ["Settings", "default_env_file", "load_settings"]


def default_env_file() -> Path:
    """Where ``streamer dev up`` writes its connection settings."""
    return Path(os.environ.get("STREAMER_HOME", ".streamer")) / "dev.env"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STREAMER_",
        env_nested_delimiter="__",
        frozen=True,
        extra="ignore",
    )

    # Kafka
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    kafka: dict[str, str] = Field(
        default_factory=dict,
        description="librdkafka properties passed through (SASL, TLS, ...)",
    )
    schema_registry_url: str | None = Field(
        None, description="Schema Registry URL; unset means Avro single-object encoding"
    )
    product_topic: str = "catalog.product.v1"
    media_topic: str = "catalog.media.v1"
    outcome_topic: str = "catalog.gallery.updated.v1"
    dlq_topic: str = "catalog.gallery.dlq"
    dlq_max_value_bytes: int = Field(
        900_000, ge=1024, description="larger originals are cut, with size and SHA-256 in headers"
    )
    group_id: str = "streamer"
    topic_partitions: int = Field(12, ge=1)
    topic_replication_factor: int = Field(1, ge=1)
    fetch_wait_max_ms: int = Field(100, ge=1, description="10 against the Tansu dev broker")
    session_timeout_ms: int = Field(45000, ge=1000)
    max_poll_interval_ms: int = Field(300000, ge=1000)
    delivery_timeout_ms: int = Field(30000, ge=1000)

    # PostgreSQL
    database_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/streamer")
    database_pool_size: int = Field(4, ge=1)
    database_timeout_s: float = Field(10.0, gt=0)

    # S3
    s3_endpoint_url: str | None = None
    s3_bucket: str = "catalog"
    s3_prefix: str = "media/catalog/product"
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = Field(None, description="Overrides the standard AWS chain")
    s3_secret_access_key: SecretStr | None = None
    etag_source: Literal["head", "list"] = "head"
    head_concurrency: int = Field(32, ge=1, le=1024)
    head_timeout_s: float = Field(5.0, gt=0)
    verify_producer_etag: bool = True

    # Gallery rules
    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1)
    image_limit: int | None = Field(None, ge=0, description="0 = gallery sync off, N = keep N")

    # Batching
    batch_max_events: int = Field(2000, ge=1)
    batch_max_wait_ms: int = Field(200, ge=0)

    # Failures
    retry_initial_backoff_ms: int = Field(300, ge=1)
    retry_max_backoff_ms: int = Field(30000, ge=1)
    retry_max_attempts: int = Field(5, ge=1)
    circuit_failure_threshold: int = Field(3, ge=1)
    circuit_reset_timeout_s: float = Field(2.0, gt=0)

    # Operations
    metrics_host: str = "0.0.0.0"  # noqa: S104 - scraped from outside the pod
    metrics_port: int = Field(9400, ge=0, le=65535, description="0 disables the HTTP server")
    lag_refresh_s: float = Field(5.0, gt=0)
    shutdown_grace_s: float = Field(25.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("kafka_bootstrap", "s3_bucket", "group_id")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @property
    def database_dsn(self) -> str:
        return self.database_url.get_secret_value()

    def kafka_config(self, **extra: Any) -> dict[str, Any]:
        """librdkafka configuration shared by producers, consumers and the admin client."""
        config: dict[str, Any] = {"bootstrap.servers": self.kafka_bootstrap}
        for key, value in self.kafka.items():
            config[key.lower().replace("_", ".")] = value
        config.update(extra)
        return config


def load_settings(env_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings, turning validation errors into one message that names each bad setting."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    path = env_file if env_file is not None else default_env_file()
    try:
        return Settings(_env_file=path if path.exists() else None, **clean)  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = "_".join(str(p) for p in err["loc"]).upper()
            problems.append(f"STREAMER_{name}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from exc
