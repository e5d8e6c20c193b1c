"""The replicator's settings: its consumer group, the destination store and the seed's rules."""

from __future__ import annotations

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from streamer.config import NonBlank, Section
from streamer.errors import ConfigError
from streamer.storage.errors import StoreNames
from streamer.storage.settings import S3Settings

__all__ = ["ReplicaSettings"]


class ReplicaSettings(Section):
    replica_group_id: NonBlank = "streamer-replicate"
    replica_bucket: str | None = Field(None, description="Destination bucket; required to run")
    replica_prefix: str = "media/catalog/product"
    replica_endpoint_url: str | None = Field(
        None, description="Unset: the source's endpoint and credentials (server-side copies)"
    )
    replica_region: str | None = None
    replica_access_key_id: str | None = None
    replica_secret_access_key: SecretStr | None = Field(None, validate_default=True)
    replica_image_limit: int | None = Field(
        None, ge=0, description="0 = replication off, 1 = first image by position, N = first N"
    )
    replica_max_image_bytes: int = Field(10 * 1024 * 1024, ge=1)
    replica_concurrency: int = Field(16, ge=1, le=256, description="S3 requests in flight")
    replica_part_size_bytes: int = Field(
        8 * 1024 * 1024, ge=5 * 1024 * 1024, description="streamed copies buffer one part each"
    )
    replica_timeout_s: float = Field(30.0, gt=0)

    @field_validator("replica_secret_access_key")
    @classmethod
    def _paired(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        """Both halves of a key or neither: one alone fails late, in botocore, as a traceback."""
        if bool(info.data.get("replica_access_key_id")) != bool(value and value.get_secret_value()):
            raise ValueError(
                "set together with STREAMER_REPLICA_ACCESS_KEY_ID, or leave both unset"
            )
        return value

    @property
    def server_side(self) -> bool:
        """Same endpoint as the source: S3 copies the bytes itself (CopyObject)."""
        return self.replica_endpoint_url is None

    def names(self) -> StoreNames:
        """The settings that configure the destination, for messages that say what to fix:
        on the source's endpoint the source's credentials sign the requests."""
        if self.server_side:
            return StoreNames(store="the replica store", bucket="STREAMER_REPLICA_BUCKET")
        return StoreNames(
            store="the replica store",
            bucket="STREAMER_REPLICA_BUCKET",
            endpoint="STREAMER_REPLICA_ENDPOINT_URL",
            access_key_id="STREAMER_REPLICA_ACCESS_KEY_ID",
            secret_access_key="STREAMER_REPLICA_SECRET_ACCESS_KEY",  # noqa: S106 - its name
        )

    def bucket(self) -> str:
        if not self.replica_bucket or not self.replica_bucket.strip():
            raise ConfigError(
                "STREAMER_REPLICA_BUCKET is not set: the replicator needs a destination bucket"
            )
        return self.replica_bucket.strip()

    def destination(self, source: S3Settings) -> str:
        """Names the destination in the replicator's tables: what it holds is per destination."""
        endpoint = self.replica_endpoint_url or source.s3_endpoint_url or "aws"
        return f"{endpoint.rstrip('/')}/{self.bucket()}/{self.replica_prefix.strip('/')}"

    def store(self, source: S3Settings) -> S3Settings:
        """The destination as S3 settings: its bucket and prefix, the source's endpoint and
        credentials when it shares them (client timeouts sized for copies, not HEADs)."""
        if self.server_side:
            return source.model_copy(
                update={
                    "s3_bucket": self.bucket(),
                    "s3_prefix": self.replica_prefix,
                    "head_timeout_s": self.replica_timeout_s,
                    "head_concurrency": self.replica_concurrency,
                }
            )
        return S3Settings(
            s3_endpoint_url=self.replica_endpoint_url,
            s3_bucket=self.bucket(),
            s3_prefix=self.replica_prefix,
            s3_region=self.replica_region or source.s3_region,
            s3_access_key_id=self.replica_access_key_id,
            s3_secret_access_key=self.replica_secret_access_key,
            head_concurrency=self.replica_concurrency,
            head_timeout_s=self.replica_timeout_s,
        )
