"""Checking the way to Kafka before a command relies on it.

librdkafka retries a refused TLS handshake or SASL login forever, so a worker with a
wrong password or an untrusted certificate would look alive and do nothing. One
bounded metadata request at start turns those into a clear error naming what to fix;
a broker that merely does not answer is reported as unavailable (retriable).
"""

from __future__ import annotations

import asyncio
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from streamer.runtime.errors import BrokerAccessDenied, BrokerUnavailable
from streamer.runtime.settings import KafkaSettings

__all__ = ["check_broker", "check_broker_async", "denied"]

_HINTS = {
    KafkaError._AUTHENTICATION: (
        "Kafka refused the SASL login",
        "check STREAMER_KAFKA__SASL_MECHANISM, STREAMER_KAFKA__SASL_USERNAME and "
        "STREAMER_KAFKA__SASL_PASSWORD",
    ),
    KafkaError._SSL: (
        "the TLS handshake with Kafka failed",
        "check STREAMER_KAFKA__SECURITY_PROTOCOL and STREAMER_KAFKA__SSL_CA_LOCATION "
        "(the CA that signed the broker's certificate)",
    ),
}


def denied(settings: KafkaSettings, operation: str, resource: str) -> str:
    """What an operator needs to grant, when Kafka's authorizer refuses this client."""
    user = settings.properties().get("sasl.username")
    principal = f"User:{user}" if user else "this client's principal"
    return (
        f"Kafka denies {principal} the {operation} operation on {resource} "
        f"at {settings.kafka_bootstrap}: grant it an ACL "
        f"(kafka-acls --add --allow-principal {principal} --operation {operation} ...)"
    )


def check_broker(
    settings: KafkaSettings, *, timeout_s: float = 10.0, topics: tuple[str, ...] = ()
) -> None:
    """Raise ``BrokerAccessDenied`` or ``BrokerUnavailable`` unless Kafka answers this client
    and lets it describe ``topics``."""
    refusals: list[KafkaError] = []

    def on_error(error: KafkaError) -> None:
        if error.code() in _HINTS:
            refusals.append(error)

    # A metadata request naming a topic must never create it (brokers with
    # auto.create.topics.enable would, for a producer-like client).
    admin = AdminClient(
        settings.client_config(error_cb=on_error, **{"allow.auto.create.topics": False})
    )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            # Short slices, so a refusal ends the wait as soon as librdkafka reports it.
            admin.list_topics(timeout=min(0.5, max(0.05, deadline - time.monotonic())))
            break
        except KafkaException as exc:
            admin.poll(0)  # serves the error callbacks queued during the request
            if refusals:
                what, hint = _HINTS[refusals[0].code()]
                raise BrokerAccessDenied(
                    f"{what} at {settings.kafka_bootstrap}: {_cause(refusals[0])}; {hint}"
                ) from exc
            if time.monotonic() >= deadline:
                error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                raise BrokerUnavailable(
                    f"cannot reach Kafka at {settings.kafka_bootstrap} (STREAMER_KAFKA_BOOTSTRAP) "
                    f"within {timeout_s:.0f} s: {error.str() if error is not None else exc}"
                ) from exc
    _check_topics(admin, settings, topics, max(1.0, deadline - time.monotonic()))


def _cause(error: KafkaError) -> str:
    """librdkafka's reason without its broker-state suffix, e.g. 'certificate verify failed'."""
    text = error.str()
    return text.split(": ", 1)[-1].split(" (after ", 1)[0]


def _check_topics(
    admin: AdminClient, settings: KafkaSettings, topics: tuple[str, ...], timeout_s: float
) -> None:
    """Topic by topic: a request for every topic leaves out the ones this client may not
    describe, so a denied topic would look missing."""
    for topic in topics:
        try:
            meta = admin.list_topics(topic=topic, timeout=timeout_s).topics.get(topic)
        except KafkaException as exc:
            raise BrokerUnavailable(
                f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}"
            ) from exc
        error = meta.error if meta is not None else None
        if error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            raise BrokerAccessDenied(denied(settings, "Describe", f"topic {topic!r}"))


async def check_broker_async(
    settings: KafkaSettings, *, timeout_s: float = 10.0, topics: tuple[str, ...] = ()
) -> None:
    """``check_broker`` off the event loop."""
    await asyncio.to_thread(check_broker, settings, timeout_s=timeout_s, topics=topics)
