"""Standard Webhooks signing (standardwebhooks.com, v1), with the standard library's hmac. Pure.

Each request carries ``webhook-id`` (the delivery's idempotency key, the same on every
retry and redelivery; also sent as ``Idempotency-Key`` for receivers built on that
convention), ``webhook-timestamp`` (Unix seconds of this attempt: receivers reject
stale ones, so it is not the event's time) and ``webhook-signature``: one
``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` per secret, space-separated,
so a receiver that knows either the old or the new secret accepts the request while
secrets rotate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from streamer.errors import ConfigError

__all__ = ["SECRET_PREFIX", "SigningKeys", "parse_secrets", "signature_headers"]

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
_MIN_SECRET_BYTES = 16


def parse_secrets(raw: str | None) -> list[bytes]:
    """The key bytes of each ``whsec_<base64>`` secret (spaces or commas between several).

    Errors name the setting and the secret's position, never its value.
    """
    if raw is None or not raw.strip():
        raise ConfigError(
            "STREAMER_WEBHOOK_SECRET is not set: the forwarder signs every request "
            "(a Standard Webhooks secret, whsec_ followed by base64)"
        )
    keys = []
    for n, secret in enumerate(raw.replace(",", " ").split(), start=1):
        if not secret.startswith(SECRET_PREFIX):
            raise ConfigError(f"STREAMER_WEBHOOK_SECRET: secret #{n} does not start with whsec_")
        encoded = secret[len(SECRET_PREFIX) :]
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(
                f"STREAMER_WEBHOOK_SECRET: secret #{n} is not base64 after whsec_"
            ) from None
        if len(key) < _MIN_SECRET_BYTES:
            raise ConfigError(
                f"STREAMER_WEBHOOK_SECRET: secret #{n} has {len(key)} bytes, "
                f"fewer than {_MIN_SECRET_BYTES}"
            )
        keys.append(key)
    return keys


@dataclass(frozen=True)
class SigningKeys:
    keys: tuple[bytes, ...]

    def __repr__(self) -> str:  # keys never in a log or a traceback
        return f"SigningKeys({len(self.keys)} keys)"

    @classmethod
    def from_setting(cls, raw: str | None) -> SigningKeys:
        return cls(tuple(parse_secrets(raw)))

    def signature(self, webhook_id: str, timestamp: int, body: bytes) -> str:
        signed = b"%s.%d.%s" % (webhook_id.encode(), timestamp, body)
        return " ".join(
            "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
            for key in self.keys
        )


def signature_headers(
    keys: SigningKeys, webhook_id: str, timestamp: int, body: bytes
) -> Sequence[tuple[str, str]]:
    return (
        ("webhook-id", webhook_id),
        ("webhook-timestamp", str(timestamp)),
        ("webhook-signature", keys.signature(webhook_id, timestamp, body)),
        ("idempotency-key", webhook_id),
    )
