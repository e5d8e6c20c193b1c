"""Traces on the real stack: one bulk is one connected trace from the intake to the webhook
receiver, across processes; the jobs' spans in one process; and an OTLP endpoint that does
not answer never holds processing back.

The collector is ``tests.integration.otlp.OtlpReceiver`` (OTLP/HTTP and gRPC, decoded with the
``opentelemetry-proto`` messages); the webhook receiver is ``streamer.dev.receiver``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from streamer.dev.receiver import Receiver
from streamer.runtime import tracing
from tests.integration.api_support import api_server, seed_payload
from tests.integration.forwarding import SECRET, forward_drained, forwarder
from tests.integration.otlp import Blackhole, OtlpReceiver, Span, render
from tests.integration.support import (
    Sender,
    dead_letters,
    drained,
    media,
    prepare,
    process,
    put_image,
    read_topic,
    run_until_drained,
    settings_env,
    wait_for,
)

pytestmark = pytest.mark.integration


def otel_env(endpoint: str, protocol: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within a tenth of a second
    }


CALLER_TRACE = "5eed" * 8


def one(spans: list[Span], name: str, **attributes: Any) -> Span:
    found = [
        s
        for s in spans
        if s.name == name and all(s.attributes.get(k) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, (name, attributes, [(s.service, s.name) for s in spans])
    return found[0]


def connected(spans: list[Span], trace_id: str) -> list[Span]:
    """The spans that are in the trace or in a trace that links to it."""
    linking = {s.trace_id for s in spans if any(t == trace_id for t, _ in s.links)}
    return [s for s in spans if s.trace_id == trace_id or s.trace_id in linking]


async def test_one_bulk_is_one_connected_trace_from_the_intake_to_the_webhook(
    make_settings, s3_client, tmp_path: Path
) -> None:
    """serve (OTLP/HTTP), consume (OTLP/gRPC) and forward (OTLP/HTTP) as separate processes."""
    receiver = Receiver(SECRET)
    settings = make_settings(
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        webhook_rate_per_s=0,
        topic_partitions=1,
    )
    prepare(settings)
    put_image(s3_client, settings, "/shared/a.jpg", b"image-a")
    with OtlpReceiver() as otlp, receiver:
        base = settings_env(settings)
        api_env = otel_env(otlp.http_url, "http/protobuf")
        with api_server(settings, tmp_path, extra_env=api_env) as server:
            async with server.client() as http:
                taken = await http.post(  # from a caller whose trace the intake continues
                    "/v1/galleries/bulk",
                    json=seed_payload("traced-1", ["TR-1", "TR-2"]),
                    headers={"traceparent": f"00-{CALLER_TRACE}-{'c' * 16}-01"},
                )
                assert taken.status_code == 202, taken.text
            consume_env = {**base, **otel_env(otlp.grpc_url, "grpc")}
            forward_env = {**base, **otel_env(otlp.http_url, "http/protobuf")}
            with (
                process(["consume"], consume_env, tmp_path / "consume.log") as consume,
                process(["forward"], forward_env, tmp_path / "forward.log") as forward,
            ):

                async def delivered() -> bool:
                    assert consume.poll() is None, (tmp_path / "consume.log").read_text()
                    assert forward.poll() is None, (tmp_path / "forward.log").read_text()
                    return len(receiver.accepted()) >= 2

                await wait_for(delivered, timeout_s=120, what="both webhooks delivered")

            def completed() -> list[Any]:
                return read_topic(settings, settings.topics.import_completed_topic, idle_s=0.3)

            async def relayed() -> bool:
                return bool(completed())

            await wait_for(relayed, timeout_s=60, what="the bulk's ImportCompleted")
            (completion,) = completed()
        # every process stopped (SIGTERM): what their tracers held is exported by now

        spans = otlp.spans()
        assert otlp.requests["http"] and otlp.requests["grpc"], dict(otlp.requests)
        intake = one(spans, "bulk intake")
        bulk_trace = intake.trace_id
        assert bulk_trace == CALLER_TRACE
        server_span = next(s for s in spans if s.span_id == intake.parent_id)
        assert server_span.kind == "server" and server_span.service == "streamer-api"
        assert server_span.parent_id == "c" * 16
        assert intake.attributes["streamer.bulk_uuid"] == taken.json()["bulk_uuid"]

        # the receiver got the bulk's trace id in each delivery's traceparent
        for record in receiver.accepted():
            parent = record.headers.get("traceparent", "")
            assert parent.split("-")[1] == bulk_trace, record.headers

        # the gallery batch links the bulk's trace; its steps are its children
        gallery = [s for s in spans if s.name == "process gallery"]
        assert gallery and all(s.service == "streamer-gallery" for s in gallery)
        batch = next(s for s in gallery if any(t == bulk_trace for t, _ in s.links))
        children = {s.name for s in spans if s.parent_id == batch.span_id}
        assert {"gallery state read", "gallery etag lookup", "commit"} <= children, children

        # outcomes are sent in the bulk's trace, from the intake's span, linked to the batch
        sends = [s for s in spans if s.name == f"send {settings.topics.outcome_topic}"]
        assert len(sends) == 2
        for send in sends:
            assert send.trace_id == bulk_trace and send.parent_id == intake.span_id
            assert [t for t, _ in send.links] == [batch.trace_id]  # its commit step

        # the forwarder's POSTs are children of those sends, linked to its batch
        posts = [s for s in spans if s.name == "webhook POST"]
        assert len(posts) >= 2  # a retry under load adds one
        assert {p.parent_id for p in posts} == {s.span_id for s in sends}
        assert all(p.service == "streamer-forward" and p.trace_id == bulk_trace for p in posts)
        forward_batches = [s for s in spans if s.name == "process forward"]
        assert forward_batches
        assert all(any(t == bulk_trace for t, _ in s.links) for s in forward_batches)
        assert sum(p.attributes.get("http.response.status_code") == 204 for p in posts) == 2

        # the bulk's ImportCompleted is sent on in its trace, by the relay in serve
        carried = dict(completion.headers() or [])
        assert carried["traceparent"].split(b"-")[1].decode() == bulk_trace
        relayed_span = one(spans, f"send {settings.topics.import_completed_topic}")
        assert relayed_span.trace_id == bulk_trace and relayed_span.parent_id == intake.span_id

        # one connected trace: everything of this bulk is in it or links to it
        journey = connected(spans, bulk_trace)
        services = {s.service for s in journey}
        assert services == {"streamer-api", "streamer-gallery", "streamer-forward"}, services
        picture = render(spans, bulk_trace)  # shown with -s; the README's picture is one
        (tmp_path / "trace-of-one-bulk.txt").write_text(picture + "\n")
        print(picture)


async def test_the_jobs_spans_in_one_process(make_settings, s3_client) -> None:
    """A gallery worker and a forwarder in this process, spans in the SDK's memory exporter:
    the steps of a batch, asyncpg's queries, a dead letter in its event's trace, and a
    receiver that gets no ``traceparent`` when ``STREAMER_WEBHOOK_TRACEPARENT`` is off."""
    receiver = Receiver(SECRET)
    settings = make_settings(
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        webhook_rate_per_s=0,
        webhook_traceparent=False,
        topic_partitions=1,
    )
    prepare(settings)
    put_image(s3_client, settings, "/t/a.jpg", b"a")
    exporter = InMemorySpanExporter()
    assert tracing.configure("streamer-test", exporter=exporter, environ={})
    try:
        first = "00-" + "1" * 32 + "-" + "a" * 16 + "-01"
        second = "00-" + "2" * 32 + "-" + "b" * 16 + "-01"
        sender = Sender(settings)
        topic = settings.topics.media_topic
        for sku, parent, path in (("IN-1", first, "/t/a.jpg"), ("IN-2", second, "/t/none.jpg")):
            event = media(sku, 1, [{"file_path": path}])
            value = sender.codec.encode(event, topic=topic)
            sender.raw(topic, sku.encode(), value, headers=[("traceparent", parent.encode())])
        sender.flush()
        await run_until_drained(settings, dict(sender.ends))
        spans = exporter.get_finished_spans()
        (batch,) = [s for s in spans if s.name == "process gallery"]
        assert {f"{link.context.trace_id:032x}" for link in batch.links} == {"1" * 32, "2" * 32}
        steps = {s.name: s for s in spans if s.parent and s.parent.span_id == batch.context.span_id}
        assert {"gallery state read", "gallery etag lookup", "commit"} <= steps.keys()
        queries = [s for s in spans if s.attributes and "db.system" in s.attributes]
        assert any(
            q.parent and q.parent.span_id == steps["commit"].context.span_id for q in queries
        )
        assert all(q.parent is not None for q in queries)  # no trace of its own per query

        # the outcome of IN-1 goes on in trace 1; the dead letter of IN-2 names trace 2
        (outcome,) = read_topic(settings, settings.topics.outcome_topic)
        carried = dict(outcome.headers() or [])
        assert carried["traceparent"].split(b"-")[1] == b"1" * 32
        (letter,) = dead_letters(settings)
        assert letter.reason == "object_missing" and letter.trace_id == "2" * 32
        (dead,) = [s for s in spans if s.name == "dead-letter"]
        assert f"{dead.context.trace_id:032x}" == "2" * 32

        with receiver:
            async with forwarder(settings) as running:
                ends = {(outcome.topic(), outcome.partition()): outcome.offset() + 1}
                await wait_for(
                    lambda: forward_drained(settings, ends), timeout_s=60, what="the forwarder"
                )
                assert running.metric("streamer_webhook_deliveries_total", outcome="delivered") == 1
        (record,) = receiver.accepted()
        assert "traceparent" not in record.headers  # left off for this receiver
        (post,) = [s for s in exporter.get_finished_spans() if s.name == "webhook POST"]
        assert f"{post.context.trace_id:032x}" == "1" * 32  # traced all the same
    finally:
        tracing.shutdown()


async def test_an_otlp_endpoint_that_does_not_answer_never_holds_processing_back(
    make_settings, s3_client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The exporter's first request hangs for the whole test (a minute's timeout against an
    endpoint that never answers): every event is consumed and committed meanwhile, spans
    past the small queue are dropped (said once, not per span), and the worker stops within
    its bound all the same."""
    settings = make_settings(topic_partitions=2, batch_max_events=5)
    prepare(settings)
    put_image(s3_client, settings, "/bh/a.jpg", b"a")
    with Blackhole() as hole:
        for name, value in {
            **otel_env(hole.url, "http/protobuf"),
            "OTEL_EXPORTER_OTLP_TIMEOUT": "60000",
            "OTEL_BSP_MAX_QUEUE_SIZE": "8",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4",
        }.items():
            monkeypatch.setenv(name, value)
        sender = Sender(settings)
        sender.send(media(f"BH-{n}", 1, [{"file_path": "/bh/a.jpg"}]) for n in range(60))
        caplog.set_level(logging.WARNING)
        worker = await run_until_drained(settings, dict(sender.ends), timeout_s=120)
        assert await drained(settings, sender.ends)
        assert worker.stats.messages == 60 and worker.stats.batches >= 12
        assert hole.connections >= 1  # the export was sent and is still waiting for an answer
    assert not tracing.enabled()  # the worker's stop shut its tracing down, within the bound
    dropped = [r for r in caplog.records if "dropping" in r.getMessage().lower()]
    assert 1 <= len(dropped) <= 2, [r.getMessage() for r in dropped]


def test_publish_writes_its_runs_trace_into_every_event(make_settings, tmp_path: Path) -> None:
    settings = make_settings(topic_partitions=1)
    prepare(settings)
    events = tmp_path / "events.jsonl"
    events.write_text(
        "\n".join(
            json.dumps({"type": "media", "sku": f"PUB-{n}", "images": [{"file_path": "/p/a.jpg"}]})
            for n in range(3)
        )
    )
    with OtlpReceiver() as otlp:
        env = {**settings_env(settings), **otel_env(otlp.grpc_url, "grpc")}
        done = subprocess.run(
            [sys.executable, "-m", "streamer", "publish", str(events)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        spans = otlp.spans()
    publish = one(spans, "publish")
    assert publish.service == "streamer-publish" and publish.kind == "producer"
    messages = read_topic(settings, settings.topics.media_topic)
    assert len(messages) == 3
    for message in messages:
        version, trace_id, span_id, flags = dict(message.headers() or [])["traceparent"].split(b"-")
        assert (version, trace_id.decode(), span_id.decode()) == (
            b"00",
            publish.trace_id,
            publish.span_id,
        )
        assert int(flags, 16) & 1  # sampled (the random-id bit may be set beside it)
