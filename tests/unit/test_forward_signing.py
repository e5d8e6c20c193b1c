"""Our signatures verified by the standardwebhooks package (an implementation nobody here wrote)."""

from __future__ import annotations

import base64
import os
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from streamer.errors import ConfigError
from streamer.forward.signing import SigningKeys, parse_secrets, signature_headers

pytestmark = pytest.mark.unit


def secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def headers(keys: SigningKeys, body: bytes, webhook_id: str = "msg_1") -> dict[str, str]:
    return dict(signature_headers(keys, webhook_id, int(time.time()), body))


def test_a_receiver_verifies_our_signature() -> None:
    s = secret()
    body = '{"type":"gallery","id":"SKU-1","data":{"label":"café ☕"}}'.encode()
    assert Webhook(s).verify(body, headers(SigningKeys.from_setting(s), body))["id"] == "SKU-1"


def test_while_secrets_rotate_a_receiver_with_either_one_verifies() -> None:
    old, new = secret(), secret()
    keys = SigningKeys.from_setting(f"{old} {new}")
    body = b'{"x":1}'
    h = headers(keys, body)
    assert len(h["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, h)
    Webhook(new).verify(body, h)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret()).verify(body, h)


def test_a_changed_body_or_id_fails_verification() -> None:
    s = secret()
    keys = SigningKeys.from_setting(s)
    h = headers(keys, b'{"x":1}')
    with pytest.raises(WebhookVerificationError):
        Webhook(s).verify(b'{"x":2}', h)
    with pytest.raises(WebhookVerificationError):
        Webhook(s).verify(b'{"x":1}', {**h, "webhook-id": "msg_2"})


def test_the_idempotency_key_is_the_webhook_id() -> None:
    h = headers(SigningKeys.from_setting(secret()), b"{}", webhook_id="msg_abc")
    assert h["idempotency-key"] == h["webhook-id"] == "msg_abc"


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (None, "is not set"),
        ("  ", "is not set"),
        ("sk_live_abc", "secret #1 does not start with whsec_"),
        ("whsec_!!!notbase64", "secret #1 is not base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "fewer than 16"),
    ],
)
def test_bad_secrets_are_named_but_never_shown(raw: str | None, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_secrets(raw)
    assert says in str(info.value) and "STREAMER_WEBHOOK_SECRET" in str(info.value)
    if raw and raw.strip():
        assert raw not in str(info.value)


def test_keys_never_show_in_a_repr() -> None:
    s = secret()
    keys = SigningKeys.from_setting(s)
    assert s[6:] not in repr(keys) and "keys" in repr(keys)
