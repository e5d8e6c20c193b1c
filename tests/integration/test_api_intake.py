"""The intake API over real HTTP against `streamer serve`: what it accepts, refuses and says."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from typer.testing import CliRunner

from streamer.cli import app
from streamer.contract.codec import Codec
from streamer.settings import Settings
from streamer.tracking.model import tracked_item
from tests.integration.api_support import READ_TOKEN, api_server, seed_payload
from tests.integration.support import fetch, prepare, read_topic, settings_env

pytestmark = pytest.mark.integration


def item(sku: Any, *images: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"sku": sku, "images": list(images), **extra}


def img(path: str, **extra: Any) -> dict[str, Any]:
    return {"file_path": path, **extra}


async def test_seed_payload_is_published_acknowledged_and_tracked(
    make_settings, tmp_path, monkeypatch
) -> None:
    settings = make_settings()
    prepare(settings)
    with api_server(settings, tmp_path) as server:
        async with server.client() as http:
            reply = await http.post(
                "/v1/galleries/bulk",
                json=seed_payload("op-12345", ["SKU-001", "SKU-002"], "media/sku-1.jpg"),
            )
            assert reply.status_code == 202, reply.text
            body = reply.json()
            uuid.UUID(body["bulk_uuid"])
            assert body["request_id"] == "op-12345" and body["errors"] is False
            assert [(i["id"], i["sku"], i["status"]) for i in body["request_items"]] == [
                (1, "SKU-001", "accepted"),
                (2, "SKU-002", "accepted"),
            ]
            assert all(len(i["data_hash"]) == 16 and i["event_id"] for i in body["request_items"])

            status = await http.get(f"/v1/bulks/{body['bulk_uuid']}", params={"items": "true"})
            assert status.status_code == 200
            tracked = status.json()
            assert tracked["state"] == "accepted" and tracked["accepted"] == 2
            assert tracked["counts"]["pending"] == 2 and tracked["complete"] is False
            assert [i["outcome"] for i in tracked["items"]] == ["pending", "pending"]

            by_request = await http.get("/v1/bulks", params={"request_id": "op-12345"})
            assert [b["bulk_uuid"] for b in by_request.json()["bulks"]] == [body["bulk_uuid"]]

    # `streamer status --request-id` reads the same tracking.
    for key, val in settings_env(settings).items():
        if key.startswith("STREAMER_"):
            monkeypatch.setenv(key, val)
    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["status", "--request-id", "op-12345", "--json"]
    )
    assert result.exit_code == 0, result.output
    (bulk,) = json.loads(result.stdout)["request"]["bulks"]
    assert bulk["bulk_uuid"] == body["bulk_uuid"] and bulk["counts"]["pending"] == 2
    assert bulk["complete"] is False and bulk["accepted"] == 2

    messages = read_topic(settings, settings.topics.media_topic)
    codec = Codec()
    events = {m.key().decode(): (codec.decode_event(m.value()), m.headers()) for m in messages}
    assert set(events) == {"SKU-001", "SKU-002"}
    event, headers = events["SKU-001"]
    assert event.request_id == "op-12345" and event.images[0].file_path == "/media/sku-1.jpg"
    assert tracked_item(headers).bulk_uuid == body["bulk_uuid"]
    assert event.event_id == body["request_items"][0]["event_id"]


async def test_every_rejection_reason_is_named_and_nothing_rejected_is_published(
    make_settings, tmp_path
) -> None:
    settings = make_settings()
    prepare(settings)
    items = [
        "not an object",  # 1 malformed_item
        item("NO-IMAGES"),  # 2 empty_images
        item("NO-PATH", {"label": "x"}),  # 3 missing_file_path
        item("DOTS", img("../etc/passwd")),  # 4 invalid_file_path
        item("", img("a.jpg")),  # 5 invalid_sku (empty)
        item("X" * 65, img("a.jpg")),  # 6 invalid_sku (too long)
        item("LABEL", img("a.jpg", label="L" * 300)),  # 7 invalid_label
        item("MANY", *[img(f"m/{i}.jpg") for i in range(1001)]),  # 8 too_many_images
        item("BIG", *[img(f"big/{'p' * 200}-{i}.jpg") for i in range(900)]),  # 9 too_large
        item("TWICE", img("first.jpg")),  # 10 superseded by 11
        item("TWICE", img("second.jpg")),  # 11 accepted
        item("OK", img("ok.jpg"), mode="REPLACE"),  # 12 accepted
        item("BADMODE", img("ok.jpg"), mode="MERGE"),  # 13 invalid_event
    ]
    with api_server(
        settings, tmp_path, extra_env={"STREAMER_KAFKA__MESSAGE_MAX_BYTES": "100000"}
    ) as server:
        async with server.client() as http:
            reply = await http.post(
                "/v1/galleries/bulk", json={"request": {"request_id": "rej", "items": items}}
            )
            assert reply.status_code == 202, reply.text
            acks = {i["id"]: i for i in reply.json()["request_items"]}
            assert reply.json()["errors"] is True
            expected = {
                1: ("rejected", "malformed_item"),
                2: ("rejected", "empty_images"),
                3: ("rejected", "missing_file_path"),
                4: ("rejected", "invalid_file_path"),
                5: ("rejected", "invalid_sku"),
                6: ("rejected", "invalid_sku"),
                7: ("rejected", "invalid_label"),
                8: ("rejected", "too_many_images"),
                9: ("rejected", "too_large"),
                10: ("superseded", None),
                11: ("accepted", None),
                12: ("accepted", None),
                13: ("rejected", "invalid_event"),
            }
            assert {k: (a["status"], a["reason"]) for k, a in acks.items()} == expected
            assert all(acks[k]["error_message"] for k in expected if k not in (11, 12))
            assert acks[10]["error_message"].startswith("superseded by item 11")

            lines = "\n".join(
                [
                    "{not json",
                    json.dumps({"type": "Nope", "sku": "A"}),
                    json.dumps({"type": "media", "sku": "A", "bogus": 1, "images": []}),
                    json.dumps({"type": "product", "sku": "A", "event_id": "nope"}),
                    json.dumps({"type": "product", "sku": "EV-OK", "name": "fine"}),
                ]
            )
            events = await http.post("/v1/events", content=lines, params={"request_id": "ev-1"})
            assert events.status_code == 202, events.text
            reasons = [(i["status"], i["reason"]) for i in events.json()["request_items"]]
            assert reasons == [
                ("rejected", "malformed_json"),
                ("rejected", "unknown_event_type"),
                ("rejected", "unknown_field"),
                ("rejected", "invalid_event_id"),
                ("accepted", None),
            ]

            # Well formed, every item rejected: answered like any other request (as the
            # gallery connector's async bulk does), each item saying why.
            nothing = await http.post("/v1/galleries/bulk", json={"request": {"items": [item("")]}})
            assert nothing.status_code == 202, nothing.text
            assert nothing.json()["bulk_uuid"] is None and "location" not in nothing.headers
            assert "nothing was published" in nothing.json()["detail"]

            for payload, fragment in [
                ({"items": []}, 'top-level "request"'),
                ({"request": {"items": "x"}}, '"request.items" as a list'),
                ([1, 2], "must be a JSON object"),
            ]:
                bad = await http.post("/v1/galleries/bulk", json=payload)
                assert bad.status_code == 422, bad.text
                assert fragment in bad.json()["detail"]

    published = read_topic(settings, settings.topics.media_topic)
    assert sorted(m.key().decode() for m in published) == ["OK", "TWICE"]
    second = Codec().decode_event(next(m for m in published if m.key() == b"TWICE").value())
    assert second.images[0].file_path == "/second.jpg"
    products = read_topic(settings, settings.topics.product_topic)
    assert [Codec().decode_event(m.value()).request_id for m in products] == ["ev-1"]
    rows = await fetch(settings, "SELECT status, count(*) AS n FROM bulk_items GROUP BY status")
    assert {r["status"]: r["n"] for r in rows} == {"accepted": 3, "rejected": 14, "superseded": 1}


async def test_limits_malformed_json_and_tokens(make_settings, tmp_path) -> None:
    settings = make_settings()
    prepare(settings)
    env = {"STREAMER_API_MAX_BODY_BYTES": "4096", "STREAMER_API_MAX_ITEMS": "5"}
    with api_server(settings, tmp_path, extra_env=env) as server:
        async with server.client() as http:
            big = json.dumps(seed_payload("big", ["A"], "x" * 5000))
            too_large = await http.post("/v1/galleries/bulk", content=big)
            assert too_large.status_code == 413
            assert "4096 bytes" in too_large.json()["detail"]

            async def chunks() -> Any:
                for _ in range(10):
                    yield b" " * 1000  # no Content-Length: the limit holds while streaming

            streamed = await http.post("/v1/galleries/bulk", content=chunks())
            assert streamed.status_code == 413

            many = await http.post(
                "/v1/galleries/bulk", json=seed_payload("many", [f"S{i}" for i in range(6)])
            )
            assert many.status_code == 422
            assert "6 items, over the limit of 5" in many.json()["detail"]

            broken = await http.post("/v1/galleries/bulk", content=b'{"request": {"items": [}')
            assert broken.status_code == 400
            assert broken.json()["reason"] == "malformed_json"
            assert "line 1 column 24" in broken.json()["detail"]

            not_utf8 = await http.post("/v1/events", content=b"\xff\xfe")
            assert not_utf8.status_code == 400

        payload = seed_payload("auth", ["A"])
        async with server.client(token=None) as anonymous:
            missing = await anonymous.post("/v1/galleries/bulk", json=payload)
            assert missing.status_code == 401
            assert missing.headers["www-authenticate"].startswith("Bearer")
            assert (await anonymous.get("/v1/bulks")).status_code == 401
            assert (await anonymous.get("/healthz")).status_code == 200
        async with server.client(token="wrong-" + "x" * 30) as wrong:
            assert (await wrong.post("/v1/galleries/bulk", json=payload)).status_code == 401
            assert (await wrong.get("/v1/bulks")).status_code == 401
        async with server.client(token=READ_TOKEN) as reader:
            forbidden = await reader.post("/v1/galleries/bulk", json=payload)
            assert forbidden.status_code == 403
            assert (await reader.post("/v1/events", content=b"{}")).status_code == 403
            assert (await reader.get("/v1/bulks")).status_code == 200
        async with server.client(token=None) as anonymous:
            docs = await anonymous.get("/docs")
            assert docs.status_code == 200
            spec = (await anonymous.get("/openapi.json")).json()
            assert (
                "/v1/galleries/bulk" in spec["paths"] and "/v1/bulks/{bulk_uuid}" in spec["paths"]
            )
            metrics = (await anonymous.get("/metrics")).text
            assert (
                'streamer_api_requests_total{method="POST",route="/v1/galleries/bulk",status="413"} 2.0'
                in metrics
            )
            assert 'route="/v1/bulks",status="401"' in metrics
    assert read_topic(settings, settings.topics.media_topic) == []


SHORT_REQUESTS = {"STREAMER_KAFKA__REQUEST_TIMEOUT_MS": "2000"}


@contextmanager
def behind_a_proxy(make_settings: Callable[..., Settings]) -> Iterator[tuple[Any, Settings]]:
    """The test's broker reached through a proxy that can refuse produce requests or cut
    every connection, with its topics and schema ready."""
    from tests.integration.kafka_proxy import proxied_broker

    with proxied_broker() as proxy:
        settings = make_settings(
            kafka_bootstrap=f"127.0.0.1:{proxy.port}", delivery_timeout_ms=3000
        )
        prepare(settings)
        yield proxy, settings


async def test_broker_down_means_503_and_the_answer_names_what_went_out(
    make_settings, tmp_path
) -> None:
    with behind_a_proxy(make_settings) as (proxy, settings):
        with api_server(settings, tmp_path, extra_env=SHORT_REQUESTS) as server:
            async with server.client() as http:
                skus = [f"P-{i:04d}" for i in range(2000)]
                # The produce path is down, metadata still answers: nothing goes out.
                proxy.produce_allowed = 0
                down = await http.post("/v1/galleries/bulk", json=seed_payload("down", skus[:5]))
                assert down.status_code == 503, down.text
                assert down.headers["retry-after"] == "5"
                body = down.json()
                assert {i["status"] for i in body["request_items"]} == {"undeliverable"}
                assert all(i["event_id"] for i in body["request_items"])
                assert body["detail"].endswith("none was published")
                assert body["reason"] == "undeliverable"
                status = (await http.get(f"/v1/bulks/{body['bulk_uuid']}")).json()
                assert status["state"] == "failed" and status["undeliverable"] == 5

                # One produce request gets through, the rest do not: a half-published
                # request, and the answer says exactly which items went out.
                proxy.produce_allowed = 1
                half = await http.post("/v1/galleries/bulk", json=seed_payload("half", skus))
                assert half.status_code == 503, half.text
                items = half.json()["request_items"]
                out = {i["event_id"] for i in items if i["status"] == "accepted"}
                lost = {i["event_id"] for i in items if i["status"] == "undeliverable"}
                assert out and lost and len(out) + len(lost) == len(skus), (
                    len(out),
                    len(lost),
                    {i["error_message"] for i in items},
                    server.output()[-3000:],
                )
                assert all(
                    i["error_message"].startswith("not acknowledged by the broker")
                    for i in items
                    if i["status"] == "undeliverable"
                )
                assert f"the other {len(out)} were published" in half.json()["detail"]
                half_status = (await http.get(f"/v1/bulks/{half.json()['bulk_uuid']}")).json()
                assert half_status["state"] == "partial"
                assert half_status["accepted"] == len(out)

                proxy.produce_allowed = None
            published = {
                str(Codec().decode_event(m.value()).event_id)
                for m in read_topic(settings, settings.topics.media_topic)
            }
            assert published == out, "exactly the items called accepted are on the topic"
            assert proxy.swallowed > 0

        # The broker gone altogether: refused before anything is tracked or produced.
        bulks_before = await fetch(settings, "SELECT count(*) AS n FROM bulks")
    with api_server(settings, tmp_path, extra_env=SHORT_REQUESTS) as server:
        async with server.client() as http:
            gone = await http.post("/v1/galleries/bulk", json=seed_payload("gone", ["G-1"]))
            assert gone.status_code == 503 and gone.headers["retry-after"] == "5"
            assert "nothing was published" in gone.json()["detail"]
    assert await fetch(settings, "SELECT count(*) AS n FROM bulks") == bulks_before


async def test_a_failed_delivery_makes_the_next_request_ask_the_broker_again(
    make_settings, tmp_path
) -> None:
    """The broker and topic check holds for a while once it found them (TOPICS_CHECKED_S);
    a failed delivery ends that, so with the broker gone right after, the next request is
    refused before anything is tracked, as on a server that never reached it."""
    with behind_a_proxy(make_settings) as (proxy, settings):
        with api_server(settings, tmp_path, extra_env=SHORT_REQUESTS) as server:
            async with server.client() as http:
                taken = await http.post("/v1/galleries/bulk", json=seed_payload("ok", ["A-1"]))
                assert taken.status_code == 202, taken.text
                proxy.produce_allowed = 0
                down = await http.post("/v1/galleries/bulk", json=seed_payload("down", ["A-2"]))
                assert down.status_code == 503 and down.json()["reason"] == "undeliverable"
                bulks_before = await fetch(settings, "SELECT count(*) AS n FROM bulks")
                proxy.cut()
                gone = await http.post("/v1/galleries/bulk", json=seed_payload("gone", ["A-3"]))
                assert gone.status_code == 503, gone.text
                assert gone.json()["reason"] == "broker_unavailable", gone.text
                assert "nothing was published" in gone.json()["detail"]
        assert await fetch(settings, "SELECT count(*) AS n FROM bulks") == bulks_before
