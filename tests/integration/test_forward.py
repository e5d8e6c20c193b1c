"""The webhook forwarder against a real local receiver that verifies every signature with the
``standardwebhooks`` package and records every request; each test compares the record with
what was published on a real broker: nothing missing, duplicates only under the same
webhook-id, each SKU's events in order."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from streamer.dev.receiver import Receiver, Record, Reply
from streamer.forward.client import EXCERPT_BYTES
from tests.integration.forwarding import (
    SECRET,
    Outcomes,
    Running,
    assert_received,
    forward_drained,
    forward_settings,
    forwarder,
    new_secret,
)
from tests.integration.support import dead_letters, replay, wait_for

pytestmark = pytest.mark.integration

SKUS = [f"FWD-{i:02d}" for i in range(10)]


async def test_delivers_every_event_signed_in_order(make_settings) -> None:
    with Receiver(SECRET) as receiver:
        settings = forward_settings(make_settings, receiver)
        outcomes = Outcomes(settings)
        published = outcomes.publish(SKUS, versions=3)
        async with forwarder(settings) as running:
            await running.drained(outcomes)
            assert running.metric("streamer_webhook_deliveries_total", outcome="delivered") == 30
        assert_received(receiver, published)
        assert len(receiver.accepted()) == 30
        first = receiver.accepted()[0]
        assert first.headers["idempotency-key"] == first.webhook_id
        event = first.payload
        assert set(event) == {"type", "id", "action", "timestamp", "data"}
        assert (event["type"], event["action"]) == ("gallery", "updated")
    assert dead_letters(settings) == []


async def test_500_bursts_are_retried_and_nothing_is_dead_lettered(make_settings) -> None:
    """Bursts of four 500s: a delivery fails at most four times in a row, fewer than its
    attempts (8), so every event gets through and nothing is dead-lettered."""
    with Receiver(SECRET) as receiver:
        settings = forward_settings(make_settings, receiver, webhook_max_attempts=8)
        outcomes = Outcomes(settings)
        published = outcomes.publish(SKUS, versions=2)
        n = 0

        def bursts(record: Record) -> Reply | None:
            nonlocal n
            n += 1
            return Reply(500, body=b"database busy") if (n // 4) % 2 == 0 else None

        with receiver.behaving(bursts):
            async with forwarder(settings) as running:
                await running.drained(outcomes)
                assert running.metric("streamer_webhook_requests_total", result="5xx") >= 4
        assert_received(receiver, published)
    assert dead_letters(settings) == []


async def test_a_delivery_that_keeps_failing_while_others_pass_is_dead_lettered(
    make_settings,
) -> None:
    with Receiver(SECRET) as receiver:
        settings = forward_settings(make_settings, receiver, webhook_max_attempts=3)
        outcomes = Outcomes(settings)
        published = outcomes.publish(SKUS)
        poison = {p.event_id for p in published if p.sku == "FWD-03"}

        def fails_for_one_sku(record: Record) -> Reply | None:
            if record.payload["id"] == "FWD-03":
                return Reply(500, body=b"NullPointerException in handler")
            return None

        with receiver.behaving(fails_for_one_sku):
            async with forwarder(settings) as running:
                await running.drained(outcomes)
                assert running.metric("streamer_webhook_deliveries_total", outcome="failing") == 1
        assert_received(receiver, published, missing=poison)
        tries = [r for r in receiver.snapshot() if r.payload["id"] == "FWD-03"]
        assert len(tries) == 3, "given up after exactly its attempts"
        assert len({r.webhook_id for r in tries}) == 1, "every retry under the same webhook-id"
    (letter,) = dead_letters(settings)
    details = dict(letter.details)
    assert letter.reason == "webhook_failing"
    assert letter.job == "forward" and letter.detail("sku") == "FWD-03"
    assert details["webhook.status"] == "500"
    assert details["webhook.attempts"] == "3"
    assert details["webhook.response"] == "NullPointerException in handler"
    assert int(details["webhook.first_attempt"]) <= int(details["webhook.last_attempt"])


async def circuit_open(running: Running) -> bool:
    return (
        running.metric("streamer_circuit_state", dependency="webhook") == 2
        and running.metric("streamer_paused_partitions") > 0
    )


async def test_receiver_down_at_start_pauses_then_delivers_everything(make_settings) -> None:
    receiver = Receiver(SECRET)  # not listening yet
    settings = forward_settings(make_settings, receiver)
    outcomes = Outcomes(settings)
    published = outcomes.publish(SKUS)
    try:
        async with forwarder(settings) as running:
            await wait_for(lambda: circuit_open(running), timeout_s=60, what="circuit open")
            reasons = running.worker.readiness().reasons
            assert any("circuit webhook open" in r and "cannot reach" in r for r in reasons)
            assert running.metric("streamer_webhook_requests_total", result="network") >= 1
            receiver.up()
            await running.drained(outcomes)
            assert running.worker.readiness().ready
        assert_received(receiver, published)
    finally:
        receiver.down()
    assert dead_letters(settings) == []


async def test_receiver_down_mid_run_and_back_loses_nothing(make_settings) -> None:
    with Receiver(SECRET) as receiver:
        settings = forward_settings(make_settings, receiver)
        outcomes = Outcomes(settings)
        published = outcomes.publish(SKUS)
        async with forwarder(settings) as running:
            await running.drained(outcomes)
            receiver.down()
            published += outcomes.publish(SKUS, start=2)
            await wait_for(lambda: circuit_open(running), timeout_s=60, what="circuit open")
            receiver.up()
            await running.drained(outcomes)
        assert_received(receiver, published)
    assert dead_letters(settings) == []


async def test_429_retry_after_2_means_no_request_for_2_seconds(make_settings) -> None:
    with Receiver(SECRET) as receiver:
        settings = forward_settings(
            make_settings, receiver, webhook_max_in_flight=1, webhook_rate_per_s=50
        )
        outcomes = Outcomes(settings)
        published = outcomes.publish(SKUS[:4])
        throttled: list[Record] = []

        def throttle_once(record: Record) -> Reply | None:
            if not throttled:
                throttled.append(record)
                return Reply(429, headers={"Retry-After": "2"}, body=b"slow down")
            return None

        with receiver.behaving(throttle_once):
            async with forwarder(settings) as running:
                await running.drained(outcomes)
                assert running.metric("streamer_webhook_requests_total", result="429") == 1
        assert_received(receiver, published)
        (t429,) = throttled
        later = [r for r in receiver.snapshot() if r is not t429]
        assert later, "nothing came after the 429"
        first = min(r.arrived for r in later)
        assert first - t429.answered >= 2.0, "a request came before Retry-After had passed"
    assert dead_letters(settings) == []


async def test_503_with_an_http_date_retry_after_is_honoured(make_settings) -> None:
    with Receiver(SECRET) as receiver:
        settings = forward_settings(make_settings, receiver, webhook_max_in_flight=1)
        outcomes = Outcomes(settings)
        published = outcomes.publish(SKUS[:3])
        until: list[float] = []

        def unavailable_until(record: Record) -> Reply | None:
            if not until:
                until.append(float(int(time.time()) + 3))
                return Reply(503, headers={"Retry-After": formatdate(until[0], usegmt=True)})
            return None

        with receiver.behaving(unavailable_until):
            async with forwarder(settings) as running:
                await running.drained(outcomes)
        assert_received(receiver, published)
        later = receiver.snapshot()[1:]
        assert later and min(r.arrived_wall for r in later) >= until[0]
    assert dead_letters(settings) == []


async def test_400_for_one_sku_dead_letters_it_and_delivers_the_rest_then_replays(
    make_settings,
) -> None:
    with Receiver(SECRET) as receiver:
        settings = forward_settings(make_settings, receiver)
        outcomes = Outcomes(settings)
        published = outcomes.publish(SKUS, versions=2)
        refused = {p.event_id for p in published if p.sku == "FWD-05"}

        def refuse_one_sku(record: Record) -> Reply | None:
            if record.payload["id"] == "FWD-05":
                return Reply(400, body=b'{"error": "unknown attribute color_family"}')
            return None

        with receiver.behaving(refuse_one_sku):
            async with forwarder(settings) as running:
                await running.drained(outcomes)
        assert_received(receiver, published, missing=refused)
        letters = dead_letters(settings)
        assert {(r.reason, r.detail("sku")) for r in letters} == {("webhook_refused", "FWD-05")}
        assert len(letters) == 2
        details = dict(letters[0].details)
        assert details["webhook.status"] == "400"
        assert details["webhook.attempts"] == "1", "a refusal is not retried"
        assert "color_family" in details["webhook.response"]
        assert "400 refused" in letters[0].message

        replayed = await replay(settings, job="forward")
        assert replayed.replayed == 2
        for tp, end in replayed.end_offsets.items():
            outcomes.sender.ends[tp] = max(outcomes.sender.ends.get(tp, 0), end)
        async with forwarder(settings) as running:
            await running.drained(outcomes)
        assert_received(receiver, published)


async def test_a_receiver_hanging_past_the_timeout_is_retried(make_settings) -> None:
    with Receiver(SECRET) as receiver:
        settings = forward_settings(make_settings, receiver, webhook_timeout_s=0.5)
        outcomes = Outcomes(settings)
        published = outcomes.publish(SKUS[:5])
        hung = 0

        def hang_twice(record: Record) -> Reply | None:
            nonlocal hung
            if hung < 2:
                hung += 1
                return Reply(204, hang_s=2.0)
            return None

        with receiver.behaving(hang_twice):
            async with forwarder(settings) as running:
                await running.drained(outcomes)
                assert running.metric("streamer_webhook_requests_total", result="timeout") == 2
        assert_received(receiver, published)
    assert dead_letters(settings) == []


async def test_a_10_mb_response_body_is_never_read_whole(make_settings) -> None:
    with Receiver(SECRET) as receiver:
        settings = forward_settings(make_settings, receiver)
        outcomes = Outcomes(settings)
        published = outcomes.publish(SKUS[:4])
        refused = {p.event_id for p in published if p.sku == "FWD-01"}

        def huge(record: Record) -> Reply:
            status = 422 if record.payload["id"] == "FWD-01" else 200
            return Reply(status, body=b"<html>", filler_bytes=10 * 1024 * 1024)

        with receiver.behaving(huge):
            async with forwarder(settings) as running:
                await running.drained(outcomes)
        assert_received(receiver, published, missing=refused)
        assert not all(r.response_complete for r in receiver.snapshot()), (
            "the forwarder read a 10 MB body to its end"
        )
    (letter,) = dead_letters(settings)
    excerpt = dict(letter.details)["webhook.response"]
    assert excerpt.startswith("<html>xxxx") and len(excerpt.encode()) <= EXCERPT_BYTES


async def test_410_gone_disables_delivery_and_loses_nothing(make_settings) -> None:
    with Receiver(SECRET) as receiver:
        settings = forward_settings(make_settings, receiver)
        outcomes = Outcomes(settings)
        published = outcomes.publish(SKUS)
        with receiver.behaving(lambda record: Reply(410, body=b"this endpoint was removed")):
            async with forwarder(settings) as running:
                worker = running.worker

                async def disabled_and_probed() -> bool:
                    return (
                        running.metric("streamer_webhook_disabled") == 1
                        and worker.breakers["webhook"].opened_count >= 2
                    )

                await wait_for(disabled_and_probed, timeout_s=60, what="disabled, probed twice")
                ready = worker.readiness()
                assert not ready.ready
                assert any("410 Gone" in r and "STREAMER_WEBHOOK_URL" in r for r in ready.reasons)
                sent = len(receiver.snapshot())
                assert 1 <= sent <= settings.forward.webhook_max_in_flight, (
                    "nothing sent after the 410 but what was already in flight"
                )
            assert len(receiver.snapshot()) == sent
            assert not await forward_drained(settings, outcomes.sender.ends), "offsets moved"
        assert dead_letters(settings) == [], "an endpoint that is gone dead-letters nothing"
        # The receiver is back (or the URL fixed): a restarted forwarder delivers everything.
        async with forwarder(settings) as running:
            await running.drained(outcomes)
        assert_received(receiver, published)


async def test_a_redirect_is_not_followed_and_waits_like_an_outage(make_settings) -> None:
    with Receiver(SECRET) as receiver:
        settings = forward_settings(make_settings, receiver)
        outcomes = Outcomes(settings)
        published = outcomes.publish(SKUS[:5])
        moved = receiver.url.replace("/webhooks", "/moved")

        def redirect(record: Record) -> Reply | None:
            if record.path == "/webhooks":
                return Reply(308, headers={"Location": moved})
            return None

        with receiver.behaving(redirect):
            async with forwarder(settings) as running:
                await wait_for(lambda: circuit_open(running), timeout_s=60, what="circuit open")
                reasons = running.worker.readiness().reasons
                assert any("redirect to" in r and "/moved" in r for r in reasons), reasons
                assert [r for r in receiver.snapshot() if r.path != "/webhooks"] == []
                receiver.behaviour = None  # the receiver answers at its address again
                await running.drained(outcomes)
        assert_received(receiver, published)
        assert {r.path for r in receiver.snapshot()} == {"/webhooks"}
    assert dead_letters(settings) == []


async def test_a_receiver_with_another_secret_refuses_with_401_clearly_reported(
    make_settings,
) -> None:
    with Receiver(new_secret()) as receiver:
        settings = forward_settings(make_settings, receiver)
        outcomes = Outcomes(settings)
        published = outcomes.publish(SKUS[:3])
        async with forwarder(settings) as running:
            await running.drained(outcomes)
        assert receiver.accepted() == []
        assert all(not r.verified and r.status == 401 for r in receiver.snapshot())
    letters = dead_letters(settings)
    assert len(letters) == len(published)
    assert {r.reason for r in letters} == {"webhook_unauthorized"}
    assert "STREAMER_WEBHOOK_SECRET" in letters[0].message
    assert dict(letters[0].details)["webhook.status"] == "401"
    secret = settings.forward.webhook_secret.get_secret_value()
    for letter in letters:
        assert secret not in repr(letter) and secret[6:] not in repr(letter)


async def test_an_undecodable_outcome_is_dead_lettered_and_the_rest_delivered(
    make_settings,
) -> None:
    with Receiver(SECRET) as receiver:
        settings = forward_settings(make_settings, receiver)
        outcomes = Outcomes(settings)
        published = outcomes.publish(SKUS[:3])
        outcomes.raw(b"FWD-BAD", b"\xde\xad\xbe\xef not an outcome")
        published += outcomes.publish(SKUS[:3], start=2)
        async with forwarder(settings) as running:
            await running.drained(outcomes)
        assert_received(receiver, published)
    (letter,) = dead_letters(settings)
    assert (letter.reason, letter.job, letter.detail("sku")) == (
        "unknown_framing",
        "forward",
        "FWD-BAD",
    )


async def test_batches_carry_items_in_order_under_stable_ids(make_settings) -> None:
    with Receiver(SECRET) as receiver:
        settings = forward_settings(
            make_settings, receiver, webhook_batch_max_events=7, topic_partitions=1
        )
        outcomes = Outcomes(settings)
        published = outcomes.publish(SKUS, versions=3)
        async with forwarder(settings) as running:
            await running.drained(outcomes)
        assert_received(receiver, published)
        bodies = [r.payload for r in receiver.accepted()]
        assert all(b["type"] == "batch" and b["batch_id"] for b in bodies)
        assert all(1 <= len(b["items"]) <= 7 for b in bodies)
        assert len(bodies) < len(published)
        assert {r.webhook_id for r in receiver.accepted()} == {b["batch_id"] for b in bodies}
