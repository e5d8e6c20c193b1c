"""A small OTLP trace collector for tests: what streamer's processes export, kept in memory.

It takes OTLP/HTTP (``POST /v1/traces``, protobuf) and OTLP/gRPC (``TraceService/Export``)
on loopback, decodes every request with the ``opentelemetry-proto`` messages (the same
ones a real collector reads) and keeps the spans. ``Blackhole`` is the other kind of
endpoint: it takes connections and never answers.
"""

from __future__ import annotations

import socket
import threading
from collections import defaultdict
from collections.abc import Iterable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

__all__ = ["Blackhole", "OtlpReceiver", "Span", "render"]

_KINDS = {
    ProtoSpan.SPAN_KIND_INTERNAL: "internal",
    ProtoSpan.SPAN_KIND_SERVER: "server",
    ProtoSpan.SPAN_KIND_CLIENT: "client",
    ProtoSpan.SPAN_KIND_PRODUCER: "producer",
    ProtoSpan.SPAN_KIND_CONSUMER: "consumer",
}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str | None
    attributes: dict[str, Any]
    links: tuple[tuple[str, str], ...]  # (trace id, span id)
    status: str  # unset, ok, error
    status_message: str
    start_ns: int
    end_ns: int
    events: tuple[str, ...] = field(default=())

    def text(self) -> str:
        """Everything the span says, as one string (for secret searches)."""
        return repr(self)


def _spans(request: trace_service_pb2.ExportTraceServiceRequest) -> list[Span]:
    out = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        service = str(resource.get("service.name", ""))
        for scope in resource_spans.scope_spans:
            for s in scope.spans:
                out.append(
                    Span(
                        service=service,
                        name=s.name,
                        kind=_KINDS.get(s.kind, "unspecified"),
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex() or None,
                        attributes={a.key: _value(a.value) for a in s.attributes}
                        | {f"resource.{k}": v for k, v in resource.items()},
                        links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in s.links),
                        status={0: "unset", 1: "ok", 2: "error"}.get(s.status.code, "?"),
                        status_message=s.status.message,
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        events=tuple(
                            f"{e.name} {[(a.key, _value(a.value)) for a in e.attributes]}"
                            for e in s.events
                        ),
                    )
                )
    return out


class OtlpReceiver:
    """``with OtlpReceiver() as otlp``: ``otlp.http_url`` and ``otlp.grpc_url`` take traces."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[Span] = []
        self.requests: dict[str, int] = defaultdict(int)
        receiver = self

        class Http(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                receiver._keep("http", _spans(request))
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        class Grpc(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
            def Export(self, request: Any, context: Any) -> Any:
                receiver._keep("grpc", _spans(request))
                return trace_service_pb2.ExportTraceServiceResponse()

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Http)
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Grpc(), self._grpc)
        self._grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._thread: threading.Thread | None = None

    def _keep(self, protocol: str, spans: list[Span]) -> None:
        with self._lock:
            self._spans.extend(spans)
            self.requests[protocol] += 1

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    @property
    def grpc_url(self) -> str:
        return f"http://127.0.0.1:{self._grpc_port}"

    def spans(self) -> list[Span]:
        with self._lock:
            return list(self._spans)

    def __enter__(self) -> OtlpReceiver:
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()
        self._grpc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._grpc.stop(grace=None).wait(5)


class Blackhole:
    """An endpoint that takes every connection and never answers (nor reads)."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}"

    @property
    def connections(self) -> int:
        return len(self._held)

    def _accept(self) -> None:
        self._socket.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)

    def __enter__(self) -> Blackhole:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._held:
            conn.close()
        self._socket.close()


def _is_query(span: Span) -> bool:
    return "db.system" in span.attributes or "db.system.name" in span.attributes


def render(spans: Iterable[Span], root_trace: str) -> str:
    """The trace ``root_trace`` as a text tree, and each trace linked to it below its own
    root, marked with what it links to; times in ms from the trace's start; a span's
    database queries (asyncpg's spans) summed up in one line."""
    spans = list(spans)
    by_trace: dict[str, list[Span]] = defaultdict(list)
    for s in spans:
        by_trace[s.trace_id].append(s)
    ids = {s.span_id: s for s in spans}
    start = min(s.start_ns for s in by_trace[root_trace])
    lines: list[str] = []

    def walk(span: Span, depth: int) -> None:
        ms = (span.start_ns - start) / 1e6
        took = (span.end_ns - span.start_ns) / 1e6
        linked = [
            f"{ids[sid].service}:{ids[sid].name}" if sid in ids else f"trace {tid[:8]}"
            for tid, sid in span.links
        ]
        note = f"  (links: {', '.join(linked)})" if linked else ""
        flag = " [error]" if span.status == "error" else ""
        lines.append(
            f"{'  ' * depth}{span.name}  [{span.service}, {span.kind}]  "
            f"+{ms:.1f} ms, {took:.1f} ms{flag}{note}"
        )
        children = sorted(
            (c for c in spans if c.parent_id == span.span_id), key=lambda c: c.start_ns
        )
        queries = [c for c in children if _is_query(c)]
        if queries:
            took = sum(q.end_ns - q.start_ns for q in queries) / 1e6
            lines.append(f"{'  ' * (depth + 1)}{len(queries)} database queries, {took:.1f} ms")
        for child in children:
            if not _is_query(child):
                walk(child, depth + 1)

    def roots(trace_id: str) -> list[Span]:
        members = by_trace[trace_id]
        known = {s.span_id for s in members}
        return sorted(
            (s for s in members if s.parent_id is None or s.parent_id not in known),
            key=lambda s: s.start_ns,
        )

    lines.append(f"trace {root_trace}")
    for root in roots(root_trace):
        walk(root, 1)
    for trace_id in sorted(by_trace, key=lambda t: min(s.start_ns for s in by_trace[t])):
        if trace_id == root_trace:
            continue
        if not any(tid == root_trace for s in by_trace[trace_id] for tid, _ in s.links):
            continue
        lines.append(f"linked trace {trace_id}")
        for root in roots(trace_id):
            walk(root, 1)
    return "\n".join(lines)
