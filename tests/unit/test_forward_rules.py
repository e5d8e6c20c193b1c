"""The forwarder's pure rules: payload shapes and packing, statuses, Retry-After, pacing, giving up."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from streamer.forward.ledger import Ledger
from streamer.forward.pacing import Pacer
from streamer.forward.payloads import (
    Item,
    batch_webhook_id,
    event_webhook_id,
    gallery_item,
    pack,
    product_item,
)
from streamer.forward.responses import MAX_RETRY_AFTER_S, classify, no_answer, parse_retry_after
from streamer.forward.settings import ForwardSettings
from streamer.forward.worker import batch_bound

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 20, 10, 30, tzinfo=UTC)


def record(sku: str = "SKU-1", deleted: bool = False) -> dict[str, object]:
    return {
        "event_id": uuid.uuid4(),
        "sku": sku,
        "version": 7,
        "occurred_at": NOW,
        "deleted": deleted,
        "source_event_ids": ["a"],
        "request_ids": [],
        "images": [],
        "removed": ["/a.jpg"],
        "content_changed": [],
    }


# -- payloads -----------------------------------------------------------------------------


def test_one_event_is_shaped_as_the_seeds_receivers_expect() -> None:
    r = record()
    item = gallery_item(r)
    body = json.loads(item.body)
    assert body == {
        "type": "gallery",
        "id": "SKU-1",
        "action": "updated",
        "timestamp": "2026-11-20T10:30:00.000Z",
        "data": {**r, "event_id": str(r["event_id"]), "occurred_at": "2026-11-20T10:30:00.000Z"},
    }
    assert json.loads(gallery_item(record(deleted=True)).body)["action"] == "deleted"
    (delivery,) = pack([item], max_events=1, max_bytes=10_000)
    assert delivery.body == item.body
    assert delivery.webhook_id == event_webhook_id(item.event_id)
    assert delivery.webhook_id == "msg_" + uuid.UUID(str(r["event_id"])).hex


def test_the_same_event_gives_the_same_bytes_and_id() -> None:
    r = record()
    a, b = gallery_item(r), gallery_item(dict(r))
    assert a.body == b.body
    assert (
        pack([a], max_events=1, max_bytes=9999)[0].webhook_id
        == pack([b], max_events=1, max_bytes=9999)[0].webhook_id
    )


def test_product_events_are_shaped_alike() -> None:
    event = {
        "event_id": str(uuid.uuid4()),
        "sku": "P-1",
        "version": 3,
        "occurred_at": "2026-11-20T10:30:00Z",
        "source": "pim",
        "request_id": None,
        "op": "DELETE",
        "name": None,
        "enabled": True,
    }
    body = json.loads(product_item(event).body)
    assert (body["type"], body["id"], body["action"]) == ("product", "P-1", "deleted")
    assert body["timestamp"] == "2026-11-20T10:30:00.000Z"


def items(n: int, skus: int = 3) -> list[Item]:
    return [gallery_item(record(f"S-{i % skus}")) for i in range(n)]


def test_batches_are_bounded_by_count_and_bytes_and_keep_the_order() -> None:
    its = items(23)
    batches = pack(its, max_events=5, max_bytes=1_000_000)
    assert [len(b.items) for b in batches] == [5, 5, 5, 5, 3]
    assert [i for b in batches for i in b.items] == its
    for b in batches:
        body = json.loads(b.body)
        assert body["type"] == "batch" and body["batch_id"] == b.webhook_id
        assert [json.dumps(x, separators=(",", ":")).encode() for x in body["items"]] == [
            i.body for i in b.items
        ]
        assert b.webhook_id == batch_webhook_id(i.event_id for i in b.items)
    size = len(its[0].body)
    by_bytes = pack(its, max_events=100, max_bytes=3 * size + 200)
    assert all(len(b.body) <= 3 * size + 200 for b in by_bytes)
    assert [i for b in by_bytes for i in b.items] == its


def test_an_item_larger_than_the_byte_bound_still_goes_alone() -> None:
    big = {**record(), "removed": [f"/p/{n:04d}.jpg" for n in range(100)]}
    its = [gallery_item({**big, "event_id": uuid.uuid4()}) for _ in range(3)]
    assert all(len(i.body) > 1024 for i in its)
    batches = pack(its, max_events=10, max_bytes=1024)
    assert [len(b.items) for b in batches] == [1, 1, 1]


# -- statuses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "result"),
    [
        (200, "delivered", "2xx"),
        (204, "delivered", "2xx"),
        (301, "redirect", "3xx"),
        (308, "redirect", "3xx"),
        (400, "refused", "4xx"),
        (401, "refused", "4xx"),
        (404, "refused", "4xx"),
        (422, "refused", "4xx"),
        (408, "retry", "4xx"),
        (429, "retry", "429"),
        (410, "gone", "4xx"),
        (500, "retry", "5xx"),
        (503, "retry", "5xx"),
    ],
)
def test_each_status_means_one_thing(status: int, kind: str, result: str) -> None:
    answer = classify(status)
    assert (answer.kind, answer.result) == (kind, result)


def test_401_and_403_say_what_to_check() -> None:
    assert "STREAMER_WEBHOOK_SECRET" in classify(401).description
    assert "STREAMER_WEBHOOK_SECRET" not in classify(400).description


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(format_datetime(NOW + timedelta(seconds=90), usegmt=True), NOW) == 90
    assert parse_retry_after(format_datetime(NOW - timedelta(seconds=5), usegmt=True), NOW) == 0
    assert parse_retry_after("in a while") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("999999") == MAX_RETRY_AFTER_S
    assert classify(429, retry_after="3").retry_after_s == 3.0
    assert classify(400, retry_after="3").retry_after_s is None


# -- pacing -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_requests_are_spaced_by_the_rate() -> None:
    clock = Clock()
    pacer = Pacer(10, clock=clock)
    assert [pacer.reserve() for _ in range(3)] == pytest.approx([0.0, 0.1, 0.2])
    assert Pacer(0, clock=clock).reserve() == 0.0


def test_a_429_holds_everything_and_halves_the_rate_which_comes_back() -> None:
    clock = Clock()
    pacer = Pacer(20, clock=clock)
    pacer.throttled(2.0)
    assert pacer.hold_remaining_s() == pytest.approx(2.0)
    assert pacer.reserve() == pytest.approx(2.0), "nothing starts before Retry-After"
    assert pacer.rate == 10
    for _ in range(10):
        pacer.throttled(None)
    assert pacer.rate == pytest.approx(20 / 16), "never below a sixteenth"
    for _ in range(100):
        pacer.accepted()
    assert pacer.rate == 20


# -- giving up ----------------------------------------------------------------------------


def test_a_failing_delivery_is_given_up_only_while_others_get_through() -> None:
    clock = Clock()
    ledger = Ledger(3, clock=clock)
    fail = classify(500)
    for _ in range(5):
        entry = ledger.record("a", fail, ledger.started("a"))
        clock.now += 1
    assert entry.final is None and entry.count == 5, "an outage: nothing got through"
    ledger.record("b", classify(204), ledger.started("b"))
    clock.now += 1
    entry = ledger.record("a", fail, ledger.started("a"))
    assert entry.final == "failing"


def test_a_receiver_that_cannot_be_reached_is_an_outage_not_a_failing_delivery() -> None:
    """Regression (chaos campaign): the receiver went down for 1.7 s after accepting other
    deliveries; one delivery's 8 refused connections gave it up as ``webhook_failing``."""
    clock = Clock()
    ledger = Ledger(3, clock=clock)
    started = ledger.started("a")
    ledger.record("b", classify(204), ledger.started("b"))
    down = no_answer("network", "ConnectError: All connection attempts failed", 0.0)
    for _ in range(10):
        clock.now += 1
        entry = ledger.record("a", down, started)
        started = ledger.started("a")
    assert entry.final is None and entry.answered == 0, "cannot connect: an outage"
    for _ in range(3):
        entry = ledger.record("a", classify(500), ledger.started("a"))
    assert entry.final == "failing", "answered failures while others got through"


def test_refusals_finish_at_once_and_timeouts_never_refuse() -> None:
    ledger = Ledger(1)
    assert ledger.record("a", classify(400), ledger.started("a")).final == "refused"
    timeout = no_answer("timeout", "slow", 1.0)
    assert ledger.record("b", timeout, ledger.started("b")).final is None


def test_a_batch_is_bounded_by_the_receivers_pace() -> None:
    s = ForwardSettings(webhook_rate_per_s=0, webhook_max_in_flight=8)
    assert batch_bound(2000, s) == 128
    assert batch_bound(2000, ForwardSettings(webhook_rate_per_s=2, webhook_max_in_flight=8)) == 60
    batched = ForwardSettings(webhook_batch_max_events=50, webhook_max_in_flight=8)
    assert batch_bound(2000, batched) == 2000
