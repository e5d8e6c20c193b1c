"""``streamer serve``: where it listens, who may call it, and how much one request may carry."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from streamer.config import Section

__all__ = ["MIN_TOKEN_CHARS", "ApiSettings"]

MIN_TOKEN_CHARS = 16


def _split(secret: SecretStr) -> list[str]:
    return [t.strip() for t in secret.get_secret_value().split(",") if t.strip()]


class ApiSettings(Section):
    api_host: str = Field("127.0.0.1", description="bind address; 0.0.0.0 only behind a proxy")
    api_port: int = Field(8080, ge=0, le=65535)
    api_tokens: SecretStr = Field(
        SecretStr(""), description="comma-separated bearer tokens with full access"
    )
    api_read_tokens: SecretStr = Field(
        SecretStr(""), description="comma-separated bearer tokens for reading only"
    )
    api_max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="413 above this")
    api_max_items: int = Field(20_000, ge=1, description="items (or lines) per request; 422 above")
    api_presign_ttl_s: int = Field(300, ge=1, le=43_200, description="thumbnail URL lifetime")
    api_session_ttl_s: int = Field(8 * 3600, ge=60, description="console login lifetime")
    api_max_wait_s: int = Field(
        60, ge=0, le=3600, description="cap on a request's Prefer: wait=N (0: never wait)"
    )
    api_max_waiters: int = Field(
        1000, ge=1, description="requests waiting at once per process; 503 beyond"
    )
    api_sample_interval_s: float = Field(
        30.0, ge=1, description="how often the console's jobs page samples throughput and lag"
    )

    @field_validator("api_tokens", "api_read_tokens")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        short = [t for t in _split(value) if len(t) < MIN_TOKEN_CHARS]
        if short:
            raise ValueError(
                f"{len(short)} token(s) shorter than {MIN_TOKEN_CHARS} characters; "
                "use long random tokens (e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`)"
            )
        return value

    def full_tokens(self) -> list[str]:
        return _split(self.api_tokens)

    def read_tokens(self) -> list[str]:
        return _split(self.api_read_tokens)
