"""What a receiver's answer means for a delivery. Pure, so every status is unit-tested.

- 2xx: delivered.
- 408, 429, 5xx, timeouts and network errors: retriable, never sooner than the
  answer's ``Retry-After`` (seconds or an HTTP date).
- 3xx: not followed. A signed POST sent on to wherever a ``Location`` points would
  hand the payload (and the static headers, e.g. a bearer token) to a place nobody
  configured; the redirect is an endpoint problem, so it is retried like an outage
  (circuit, pause, nothing dead-lettered) and named in the readiness reason until
  ``STREAMER_WEBHOOK_URL`` is changed or the receiver stops redirecting.
- 410 Gone: the endpoint is gone for good; delivery is disabled (see the handler).
- Other 4xx: the receiver refuses this payload: its events are dead-lettered
  (401/403 with their own reason: a signature or credential problem).
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

__all__ = [
    "MAX_RETRY_AFTER_S",
    "Answer",
    "Kind",
    "classify",
    "no_answer",
    "parse_retry_after",
]

Kind = Literal["delivered", "retry", "redirect", "gone", "refused"]
# Longer waits asked by a receiver are cut to this: a typo'd Retry-After must not stall
# the forwarder for days. Operators see the wait in the log and the readiness reason.
MAX_RETRY_AFTER_S = 3600.0
_RETRIABLE_4XX = frozenset({408, 425, 429})


@dataclass(frozen=True)
class Answer:
    """One attempt's result: the status (None when no HTTP answer came) and what it means."""

    kind: Kind
    result: str  # metric label: 2xx, 3xx, 4xx, 429, 5xx, timeout, network
    status: int | None
    description: str
    retry_after_s: float | None = None
    excerpt: str = ""
    location: str | None = None
    elapsed_s: float = 0.0

    @property
    def delivered(self) -> bool:
        return self.kind == "delivered"


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    wait = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(0.0, wait), MAX_RETRY_AFTER_S)


def classify(
    status: int,
    *,
    retry_after: str | None = None,
    location: str | None = None,
    excerpt: str = "",
    elapsed_s: float = 0.0,
    now: datetime | None = None,
) -> Answer:
    wait = parse_retry_after(retry_after, now)

    def answer(kind: Kind, result: str, description: str, retry: bool = False) -> Answer:
        return Answer(
            kind,
            result,
            status,
            description,
            retry_after_s=wait if retry else None,
            excerpt=excerpt,
            location=location,
            elapsed_s=elapsed_s,
        )

    if 200 <= status < 300:
        return answer("delivered", "2xx", f"{status} accepted")
    if 300 <= status < 400:
        where = location or "(no Location header)"
        return answer(
            "redirect",
            "3xx",
            f"{status} redirect to {where}, not followed: "
            "set STREAMER_WEBHOOK_URL to the receiver's address",
            retry=True,
        )
    if status == 410:
        return answer("gone", "4xx", "410 Gone: the receiver says this endpoint no longer exists")
    if status in _RETRIABLE_4XX:
        if status == 429:
            return answer("retry", "429", "429 too many requests", retry=True)
        return answer("retry", "4xx", f"{status} retriable", retry=True)
    if 400 <= status < 500:
        hint = ""
        if status in (401, 403):
            hint = (
                ": the receiver rejected the signature or credentials; check that "
                "STREAMER_WEBHOOK_SECRET (and STREAMER_WEBHOOK_HEADERS) match the receiver's"
            )
        return answer("refused", "4xx", f"{status} refused{hint}")
    return answer("retry", "5xx", f"{status} server error", retry=True)


def no_answer(kind: Literal["timeout", "network"], description: str, elapsed_s: float) -> Answer:
    return Answer("retry", kind, None, description, elapsed_s=elapsed_s)
