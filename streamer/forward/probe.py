"""``streamer forward test-connection``: one signed test event, and what the receiver made of it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from streamer.forward.client import USER_AGENT, WebhookClient
from streamer.forward.payloads import iso_timestamp
from streamer.forward.responses import Answer
from streamer.forward.settings import ForwardSettings
from streamer.forward.signing import SigningKeys

__all__ = ["ProbeResult", "probe_body", "send_test_event"]


def probe_body(now: datetime | None = None) -> bytes:
    """A body in the single-event shape, ``"type": "test"``, that changes nothing anywhere."""
    import json

    timestamp = iso_timestamp(now or datetime.now(UTC))
    return json.dumps(
        {
            "type": "test",
            "id": "streamer-test-connection",
            "action": "test",
            "timestamp": timestamp,
            "data": {"message": "streamer forward test-connection", "sent_by": USER_AGENT},
        },
        separators=(",", ":"),
    ).encode()


@dataclass(frozen=True)
class ProbeResult:
    webhook_id: str
    answer: Answer

    @property
    def ok(self) -> bool:
        return self.answer.delivered

    @property
    def verdict(self) -> str:
        a = self.answer
        if a.delivered:
            return "accepted: the receiver took the signed test event"
        if a.status in (401, 403):
            return "signature or credentials REJECTED: compare STREAMER_WEBHOOK_SECRET with the receiver's"
        if a.status is None:
            return "no answer: " + a.description
        return "not accepted: " + a.description


async def send_test_event(settings: ForwardSettings) -> ProbeResult:
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    keys = SigningKeys.from_setting(secret)
    webhook_id = "msg_test_" + uuid.uuid4().hex
    async with WebhookClient(settings, keys) as client:
        answer = await client.post(webhook_id, probe_body())
    return ProbeResult(webhook_id, answer)
