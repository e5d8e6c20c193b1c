"""Where the catalog's objects live: the S3-compatible endpoint, bucket, prefix and credentials."""

from __future__ import annotations

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from streamer.config import Section

__all__ = ["S3Settings"]


class S3Settings(Section):
    s3_endpoint_url: str | None = None
    s3_bucket: str = "catalog"
    s3_prefix: str = "media/catalog/product"
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = Field(None, description="Overrides the standard AWS chain")
    s3_secret_access_key: SecretStr | None = Field(None, validate_default=True)
    head_concurrency: int = Field(32, ge=1, le=1024)
    head_timeout_s: float = Field(5.0, gt=0)

    @field_validator("s3_secret_access_key")
    @classmethod
    def _paired(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        """Both halves of a key or neither: one alone fails late, in botocore, as a traceback."""
        if bool(info.data.get("s3_access_key_id")) != bool(value and value.get_secret_value()):
            raise ValueError("set together with STREAMER_S3_ACCESS_KEY_ID, or leave both unset")
        return value

    @field_validator("s3_bucket")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()
