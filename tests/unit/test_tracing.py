"""Tracing in one process, against the SDK's in-memory exporter: what turns it on, the batch
span and its links, the context each output carries on, and that off does nothing at all."""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from streamer.contract.errors import InvalidEvent
from streamer.errors import ConfigError
from streamer.runtime import tracing
from streamer.runtime.deadletters import DeadLetter, DeadLetterRecord
from streamer.runtime.handler import Batch, HandlerContext, Output
from streamer.runtime.logs import configure_logging

pytestmark = pytest.mark.unit


def traceparent(trace_id: int, span_id: int = 1, *, sampled: bool = True) -> bytes:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}".encode()


@dataclass
class Msg:
    """The part of confluent_kafka.Message that tracing reads."""

    headers_: list[tuple[str, bytes]] = field(default_factory=list)
    offset_: int = 0
    topic_: str = "catalog.media.v1"

    def topic(self) -> str:
        return self.topic_

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self.offset_

    def key(self) -> bytes:
        return b"SKU-1"

    def value(self) -> bytes:
        return b"payload"

    def headers(self) -> list[tuple[str, bytes]]:
        return self.headers_

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)


def traced_msg(trace_id: int, *, sampled: bool = True, offset: int = 0) -> Msg:
    return Msg([("traceparent", traceparent(trace_id, sampled=sampled))], offset)


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test, every span in memory; off again afterwards."""
    exporter = InMemorySpanExporter()
    assert tracing.configure("streamer-test", exporter=exporter, environ={}, instrument=False)
    try:
        yield exporter
    finally:
        tracing.shutdown()


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def hex_id(value: int) -> str:
    return f"{value:032x}"


# -- what turns it on ---------------------------------------------------------------------


def test_off_unless_an_endpoint_or_an_exporter_is_named() -> None:
    assert tracing.config_from_env({}) is None
    assert tracing.config_from_env({"OTEL_SERVICE_NAME": "x"}) is None
    on = tracing.config_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert on is not None and on.exporters == ("otlp",) and on.protocol == "http/protobuf"
    grpc = tracing.config_from_env(
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    )
    assert grpc is not None and grpc.protocol == "grpc"
    assert (
        tracing.config_from_env(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}
        )
        is None
    )
    assert (
        tracing.config_from_env(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}
        )
        is None
    )
    ratio = tracing.config_from_env(
        {
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.01",
            "OTEL_SERVICE_NAME": "pim-sync",
        }
    )
    assert ratio is not None and ratio.ratio == 0.01 and ratio.service_name == "pim-sync"


@pytest.mark.parametrize(
    ("env", "named_var"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "udp"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "OTEL_TRACES_SAMPLER"),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "one percent"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_SDK_DISABLED": "yes"}, "OTEL_SDK_DISABLED"),
    ],
)
def test_a_bad_value_is_refused_naming_its_variable(env: dict[str, str], named_var: str) -> None:
    with pytest.raises(ConfigError, match=named_var):
        tracing.config_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", **env})


def test_off_every_call_is_a_no_op_and_nothing_is_read_or_written() -> None:
    assert not tracing.enabled()

    class Untouchable(Msg):
        def headers(self) -> list[tuple[str, bytes]]:
            raise AssertionError("headers read while tracing is off")

    batch = Batch([Untouchable()])
    assert tracing.begin_batch(batch, job="gallery", group="g") is batch
    with tracing.batch_scope(batch), tracing.span("state read") as s:
        assert not s.get_span_context().is_valid
    assert tracing.sent_on("out", [Untouchable()]) is None
    assert tracing.headers_of_current() == []
    assert tracing.current_ids() is None
    letter = DeadLetter.from_error(Msg(), InvalidEvent("bad"), group_id="g")
    assert tracing.traced_letter(letter, Untouchable()) is letter
    headers = [("traceparent", traceparent(7))]
    assert tracing.resent("t", headers) is headers


# -- the batch span and its links -----------------------------------------------------------


def test_a_batch_span_is_a_root_linked_once_to_each_trace_of_its_events(
    spans: InMemorySpanExporter,
) -> None:
    messages = [traced_msg(1, offset=0), traced_msg(1, offset=1), traced_msg(2, offset=2), Msg()]
    with tracing.span("where it was polled"):
        batch = tracing.begin_batch(Batch(messages), job="gallery", group="streamer")
    with tracing.batch_scope(batch):
        with tracing.span("gallery state read", {"streamer.skus": 1}):
            pass
        tracing.batch_committed(batch, Output(counts=Counter(written=3)))
    (span,) = named(spans, "process gallery")
    assert span.parent is None and span.kind is SpanKind.CONSUMER
    assert [hex_id(link.context.trace_id) for link in span.links] == [hex_id(1), hex_id(2)]
    attributes = dict(span.attributes or {})
    assert attributes["messaging.batch.message_count"] == 4
    assert attributes["streamer.batch.traces"] == 2
    assert attributes["streamer.batch.links_dropped"] == 0
    assert attributes["streamer.batch.committed"] is True
    assert attributes["streamer.outcome.written"] == 3
    (child,) = named(spans, "gallery state read")
    assert child.parent is not None and child.parent.span_id == span.context.span_id


def test_past_the_link_limit_sampled_traces_are_linked_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_SPAN_LINK_COUNT_LIMIT", "3")
    exporter = InMemorySpanExporter()
    tracing.configure("t", exporter=exporter, environ={}, instrument=False)
    try:
        messages = [traced_msg(n, sampled=n % 2 == 0) for n in range(1, 9)]
        batch = tracing.begin_batch(Batch(messages), job="forward", group="g")
        with tracing.batch_scope(batch):
            pass
    finally:
        tracing.shutdown()
    (span,) = named(exporter, "process forward")
    assert [link.context.trace_id for link in span.links] == [2, 4, 6]
    attributes = dict(span.attributes or {})
    assert attributes["streamer.batch.traces"] == 8
    assert attributes["streamer.batch.links_dropped"] == 5


def test_a_batch_holding_a_sampled_event_is_sampled_whatever_the_ratio() -> None:
    exporter = InMemorySpanExporter()
    env = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}
    tracing.configure("t", exporter=exporter, environ=env, instrument=False)
    try:
        for messages in ([traced_msg(5, sampled=False)], [traced_msg(6, sampled=True)]):
            with tracing.batch_scope(tracing.begin_batch(Batch(messages), job="j", group="g")):
                pass
    finally:
        tracing.shutdown()
    (span,) = named(exporter, "process j")
    assert [link.context.trace_id for link in span.links] == [6]


def test_a_batch_left_uncommitted_says_so() -> None:
    exporter = InMemorySpanExporter()
    tracing.configure("t", exporter=exporter, environ={}, instrument=False)
    try:
        batch = tracing.begin_batch(Batch([traced_msg(1)]), job="j", group="g")
        with pytest.raises(InvalidEvent), tracing.batch_scope(batch):
            raise InvalidEvent("a secret payload value", reason="invalid_event")
    finally:
        tracing.shutdown()
    (span,) = named(exporter, "process j")
    attributes = dict(span.attributes or {})
    assert attributes["streamer.batch.committed"] is False
    assert attributes["error.type"] == "InvalidEvent"
    assert span.status.description == "invalid_event"
    assert "secret" not in repr(span.to_json())


# -- what a batch sends on ------------------------------------------------------------------


def test_an_outcome_continues_the_trace_of_its_event_linked_to_the_batch(
    spans: InMemorySpanExporter,
) -> None:
    source = Msg([("traceparent", traceparent(42, 7)), ("tracestate", b"vendor=x")])
    batch = tracing.begin_batch(Batch([source, traced_msg(43)]), job="gallery", group="g")
    with tracing.batch_scope(batch):
        headers = tracing.sent_on("catalog.gallery.updated.v1", [source, traced_msg(43)])
    assert headers is not None
    carried = dict(headers)
    assert carried["traceparent"].startswith(f"00-{hex_id(42)}-".encode())
    assert carried["tracestate"] == b"vendor=x"
    (send,) = named(spans, "send catalog.gallery.updated.v1")
    (process,) = named(spans, "process gallery")
    assert send.kind is SpanKind.PRODUCER
    assert send.context.trace_id == 42 and send.parent is not None and send.parent.span_id == 7
    assert send.links[0].context.span_id == process.context.span_id
    assert [link.context.trace_id for link in send.links][1:] == [43]
    assert carried["traceparent"].split(b"-")[2] == f"{send.context.span_id:016x}".encode()


def test_an_output_of_events_without_a_trace_continues_the_batch(
    spans: InMemorySpanExporter,
) -> None:
    batch = tracing.begin_batch(Batch([Msg()]), job="objects", group="g")
    with tracing.batch_scope(batch):
        headers = tracing.sent_on("catalog.media.v1", [])
    (process,) = named(spans, "process objects")
    assert headers is not None
    assert dict(headers)["traceparent"].split(b"-")[1] == hex_id(process.context.trace_id).encode()


def test_a_dead_letter_is_recorded_in_its_events_trace_and_names_it(
    spans: InMemorySpanExporter,
) -> None:
    msg = Msg([("traceparent", traceparent(99, 3)), ("streamer.bulk.item", b"b:1")])
    batch = tracing.begin_batch(Batch([msg]), job="gallery", group="g")
    ctx = HandlerContext(
        job="gallery",
        group_id="g",
        registry=None,
        database=None,
        call=None,
        spawn=None,  # type: ignore[arg-type]
    )
    with tracing.batch_scope(batch):
        letter = ctx.dead_letter(msg, InvalidEvent("bad image", reason="object_missing"))
    (dead,) = named(spans, "dead-letter")
    assert dead.context.trace_id == 99 and dead.status.description == "object_missing"
    headers = dict(letter.kafka_headers())
    assert headers["streamer.error.trace_id"] == hex_id(99).encode()
    assert headers["traceparent"].split(b"-")[2] == f"{dead.context.span_id:016x}".encode()
    assert headers["streamer.bulk.item"] == b"b:1"
    assert [k for k, _ in letter.kafka_headers()].count("traceparent") == 1

    class Read:
        def topic(self) -> str:
            return "dlq"

        def partition(self) -> int:
            return 0

        def offset(self) -> int:
            return 5

        def key(self) -> bytes:
            return b"SKU-1"

        def value(self) -> bytes:
            return b"payload"

        def headers(self) -> list[tuple[str, bytes]]:
            return letter.kafka_headers()

    record = DeadLetterRecord.from_message(Read())
    assert record.trace_id == hex_id(99)
    from streamer.runtime.replay import replay_headers

    replayed = tracing.resent("catalog.media.v1", replay_headers(record))
    (resend,) = named(spans, "send catalog.media.v1")
    assert resend.context.trace_id == 99 and resend.parent is not None
    assert resend.parent.span_id == dead.context.span_id
    assert dict(replayed)["traceparent"].split(b"-")[1] == hex_id(99).encode()


def test_span_attributes_never_carry_an_exception_message(spans: InMemorySpanExporter) -> None:
    with pytest.raises(InvalidEvent), tracing.span("gallery etag lookup"):
        raise InvalidEvent("path /secret/x.jpg of SKU-1 is wrong", reason="invalid_path")
    (span,) = named(spans, "gallery etag lookup")
    assert span.status.description == "invalid_path"
    assert not span.events
    assert "secret" not in span.to_json()


def test_log_lines_carry_the_trace_and_span_ids(spans: InMemorySpanExporter) -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)  # type: ignore[arg-type]
    log = logging.getLogger("streamer.test")
    log.info("outside")
    with tracing.span("inside") as inside:
        log.info("inside")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["trace_id"] is None and lines[0]["span_id"] is None
    ctx = inside.get_span_context()
    assert lines[1]["trace_id"] == trace.format_trace_id(ctx.trace_id)
    assert lines[1]["span_id"] == trace.format_span_id(ctx.span_id)


def test_an_unsampled_trace_passes_on_unchanged_and_records_nothing(
    spans: InMemorySpanExporter,
) -> None:
    unsampled = traced_msg(77, sampled=False)
    batch = tracing.begin_batch(Batch([unsampled]), job="gallery", group="g")
    with tracing.batch_scope(batch):
        headers = tracing.sent_on("out", [unsampled])
        with tracing.span_after("webhook POST", [unsampled]) as post:
            assert (
                tracing.http_headers_of(post)["traceparent"] == traceparent(77).decode()[:-2] + "00"
            )
    assert headers == unsampled.headers()
    assert [s.name for s in spans.get_finished_spans()] == ["process gallery"]  # a root


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (traceparent(5, 9), (5, 9, True)),
        (traceparent(5, 9, sampled=False), (5, 9, False)),
        (b"00-" + b"0" * 32 + b"-" + b"1" * 16 + b"-01", None),  # an all-zero trace id
        (b"00-zz" + b"1" * 30 + b"-" + b"1" * 16 + b"-01", None),
        (b"not a traceparent", None),
        (b"01-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01-future", (0xA * int("1" * 32, 16), 0, True)),
    ],
)
def test_traceparent_values_are_read_as_w3c_says(
    value: bytes, expected: tuple[int, int, bool] | None, spans: InMemorySpanExporter
) -> None:
    found = tracing._header_context([("traceparent", value), ("tracestate", b"k=v")])
    if expected is None:
        assert found is None
        return
    assert found is not None
    if value.startswith(b"00"):
        assert (found.trace_id, found.span_id, found.trace_flags.sampled) == expected
    else:  # a later version: the fields it shares with 00 still count
        assert found.trace_id == int("a" * 32, 16) and found.span_id == int("b" * 16, 16)
    assert found.trace_state.get("k") == "v"
