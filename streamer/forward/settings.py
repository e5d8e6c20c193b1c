"""The webhook forwarder's settings: where it delivers, how it signs, paces, batches and gives up.

Secrets (the signing secrets and the static headers, which typically carry a bearer
token) are ``SecretStr``: they never reach a log, a metric, a dead letter or ``--help``.
The signing secrets are parsed when the forwarder starts (``signing_secrets``), so
every other command loads settings without them.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from streamer.config import NonBlank, Section

__all__ = ["ForwardSettings"]

_HEADER_NAME = re.compile(r"[!#$%&'*+.^`|~0-9A-Za-z_-]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # a tab is allowed


class ForwardSettings(Section):
    forward_group_id: NonBlank = Field(
        "streamer-forward", description="the forwarder's consumer group"
    )
    forward_product_events: bool = Field(
        False, description="also deliver ProductChanged events from the product topic"
    )
    webhook_url: str | None = Field(None, description="the receiver's URL (http or https)")
    webhook_secret: SecretStr | None = Field(
        None, description="whsec_... signing secrets, several separated by spaces while rotating"
    )
    webhook_headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="static headers sent with every request (e.g. Authorization), kept secret",
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="bound on one request")
    webhook_max_in_flight: int = Field(8, ge=1, le=256, description="requests in flight")
    webhook_rate_per_s: float = Field(50.0, ge=0, description="requests per second; 0 = no limit")
    webhook_max_attempts: int = Field(
        8, ge=1, description="attempts of one delivery before it is dead-lettered (see README)"
    )
    webhook_batch_max_events: int = Field(
        1, ge=1, le=10_000, description="events per request; 1 = one event per request"
    )
    webhook_batch_max_bytes: int = Field(
        1_000_000, ge=1024, description="bound on a batch request's body"
    )
    webhook_traceparent: bool = Field(
        True,
        description="send the W3C traceparent header (while tracing is on); false for a "
        "third party that should not see trace ids",
    )

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value.strip()

    @field_validator("webhook_headers")
    @classmethod
    def _sendable(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        """Refused here rather than by the HTTP library at the first request, whose error
        quotes the value: a header value is typically a bearer token."""
        for name, secret in value.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"header name {name!r} is not an HTTP token")
            if _CONTROL.search(secret.get_secret_value()):
                raise ValueError(f"the value of header {name} contains a control character")
        return value

    @property
    def origin(self) -> str:
        """The receiver's scheme, host and port: what logs and messages may show of the URL
        (its path or query may carry a token)."""
        if not self.webhook_url:
            return "(no STREAMER_WEBHOOK_URL)"
        parts = urlsplit(self.webhook_url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"

    def static_headers(self) -> dict[str, str]:
        """Header names as HTTP spells them: ``STREAMER_WEBHOOK_HEADERS__X_API_KEY`` -> ``x-api-key``."""
        return {
            name.lower().replace("_", "-"): value.get_secret_value()
            for name, value in self.webhook_headers.items()
        }
