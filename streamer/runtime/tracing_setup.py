"""Tracing's set-up: what the ``OTEL_*`` variables ask for, and the SDK built from it.

On when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) or
``OTEL_TRACES_EXPORTER`` is set, off when ``OTEL_SDK_DISABLED=true`` or the exporter is
``none``. Everything else is the SDK's own variables: ``OTEL_EXPORTER_OTLP_PROTOCOL``
(``http/protobuf``, the specification's default, or ``grpc``), ``OTEL_SERVICE_NAME`` (else
``streamer-<job>``), ``OTEL_TRACES_SAMPLER``/``_ARG``, ``OTEL_BSP_*``, ``OTEL_SPAN_*_LIMIT``,
the exporters' headers, timeout, compression and certificates. A value the SDK would only
warn about is refused here, naming the variable.

Export never blocks processing: spans go to the SDK's batch processor, whose queue drops
spans when full and whose exporter runs on its own thread; ``shutdown`` is bounded. The
SDK's own warnings (one per dropped span while a collector is down) pass once a minute.
What the runtime and the jobs call is ``streamer.runtime.tracing``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Link

from streamer import __version__
from streamer.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = [
    "State",
    "TracingConfig",
    "config_from_env",
    "configure",
    "instrument_app",
    "shutdown",
    "state",
]

log = logging.getLogger(__name__)

_SCOPE = "streamer"
_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
_PROTOCOLS = ("http/protobuf", "grpc")
_EXPORTERS = ("otlp", "console")


# -- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class TracingConfig:
    """What the ``OTEL_*`` variables ask for, checked; the exporters read their own details."""

    exporters: tuple[str, ...]
    protocol: str
    sampler: str
    ratio: float | None
    service_name: str | None


def _flag(environ: Mapping[str, str], name: str) -> bool:
    value = environ.get(name, "").strip().lower()
    if value in ("", "false"):
        return False
    if value == "true":
        return True
    raise ConfigError(f"{name} must be true or false, not {environ[name]!r}")


def config_from_env(environ: Mapping[str, str] | None = None) -> TracingConfig | None:
    """The tracing asked for by the environment, or None when tracing is off.

    A value the SDK would only warn about and replace (an unknown sampler or protocol, a
    ratio that is no number) is a ``ConfigError`` naming the variable, at start.
    """
    env = os.environ if environ is None else environ
    if _flag(env, "OTEL_SDK_DISABLED"):
        return None
    named = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not named and not (endpoint or "").strip():
        return None
    exporters = tuple(dict.fromkeys(e.strip() for e in (named or "otlp").split(",") if e.strip()))
    if "none" in exporters:
        if len(exporters) > 1:
            raise ConfigError(f"OTEL_TRACES_EXPORTER={named!r} names none beside other exporters")
        return None
    for name in exporters:
        if name not in _EXPORTERS:
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER names {name!r}; streamer exports traces with "
                f"{', '.join(_EXPORTERS)} or none"
            )
    protocol_var = (
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
        if env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "").strip()
        else "OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    protocol = env.get(protocol_var, "").strip().lower() or "http/protobuf"
    if protocol not in _PROTOCOLS:
        raise ConfigError(
            f"{protocol_var}={protocol!r} is not supported; use {' or '.join(_PROTOCOLS)}"
        )
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    if sampler not in _SAMPLERS:
        raise ConfigError(f"OTEL_TRACES_SAMPLER={sampler!r} is not one of {', '.join(_SAMPLERS)}")
    ratio: float | None = None
    if sampler.endswith("traceidratio"):
        raw = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip() or "1.0"
        try:
            ratio = float(raw)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise ConfigError(
                f"OTEL_TRACES_SAMPLER_ARG={raw!r}: the sampling ratio is a number from 0 to 1"
            )
    service = (env.get("OTEL_SERVICE_NAME") or "").strip() or None
    return TracingConfig(exporters, protocol, sampler, ratio, service)


@dataclass
class State:
    provider: TracerProvider
    tracer: trace.Tracer
    max_links: int
    # A child of an unsampled parent is never sampled: its context can pass on unchanged.
    parent_based: bool = True
    instrumented: list[Any] = field(default_factory=list)


state: State | None = None  # set while tracing is on


def _sampler(config: TracingConfig) -> Any:
    from opentelemetry.sdk.trace import sampling

    base: sampling.Sampler
    if config.sampler == "always_on":
        base = sampling.ALWAYS_ON
    elif config.sampler == "always_off":
        base = sampling.ALWAYS_OFF
    elif config.sampler == "traceidratio":
        base = sampling.TraceIdRatioBased(config.ratio if config.ratio is not None else 1.0)
    elif config.sampler == "parentbased_always_off":
        base = sampling.DEFAULT_OFF
    elif config.sampler == "parentbased_traceidratio":
        base = sampling.ParentBasedTraceIdRatio(config.ratio if config.ratio is not None else 1.0)
    else:
        base = sampling.DEFAULT_ON

    class KeepLinkedJourneys(sampling.Sampler):
        """The configured sampler, except that a root span linking a sampled trace (a
        batch holding a sampled event) is sampled too (its links then lead somewhere), and
        a database query that is no part of a traced operation is not."""

        def should_sample(
            self,
            parent_context: Any,
            trace_id: int,
            name: str,
            kind: Any = None,
            attributes: Any = None,
            links: Sequence[Link] | None = None,
            trace_state: Any = None,
        ) -> sampling.SamplingResult:
            parent = trace.get_current_span(parent_context).get_span_context()
            if not parent.is_valid:
                if any(link.context.trace_flags.sampled for link in links or ()):
                    return sampling.SamplingResult(sampling.Decision.RECORD_AND_SAMPLE, attributes)
                if attributes and ("db.system" in attributes or "db.system.name" in attributes):
                    # a query outside any traced work (a poll, a claim): not worth a trace
                    return sampling.SamplingResult(sampling.Decision.DROP)
            return base.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )

        def get_description(self) -> str:
            return f"KeepLinkedJourneys{{{base.get_description()}}}"

    return KeepLinkedJourneys()


def _exporter(name: str, protocol: str) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter()


def configure(
    service: str,
    *,
    exporter: SpanExporter | None = None,
    environ: Mapping[str, str] | None = None,
    instrument: bool = True,
    batched: bool = False,
) -> bool:
    """Set tracing up for this process, once; True if this call did (its caller shuts it down).

    ``exporter`` (tests: the SDK's in-memory exporter; the benchmark: an encoding sink)
    turns tracing on whatever the environment says and exports each span as it ends, or
    through the batch processor as in production when ``batched``. ``service`` is the
    service name when ``OTEL_SERVICE_NAME`` does not give one.
    """
    global state
    if state is not None:
        return False
    env = os.environ if environ is None else environ
    if exporter is not None:  # on, with the sampler and limits the environment names
        env = {**env, "OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "false"}
    config = config_from_env(env)
    if config is None:
        return False

    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanLimits
    from opentelemetry.sdk.trace import TracerProvider as SdkProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create(
        {"service.name": config.service_name or service, "service.version": __version__}
    )
    limits = SpanLimits()
    provider = SdkProvider(
        sampler=_sampler(config), resource=resource, span_limits=limits, shutdown_on_exit=False
    )
    if exporter is not None:
        processor = BatchSpanProcessor if batched else SimpleSpanProcessor
        provider.add_span_processor(processor(exporter))
    else:
        for name in config.exporters:
            provider.add_span_processor(BatchSpanProcessor(_exporter(name, config.protocol)))
    _quiet_sdk_logs()
    built = State(
        provider,
        provider.get_tracer(_SCOPE, __version__),
        limits.max_links or 0,
        parent_based=config.sampler.startswith("parentbased"),
    )
    if instrument:
        built.instrumented = _instrument(provider)
    state = built
    log.info(
        "tracing on: %s, sampler %s",
        "in-process exporter"
        if exporter is not None
        else f"{', '.join(config.exporters)} ({config.protocol})",
        provider.sampler.get_description(),
    )
    return True


class _OncePerWindow(logging.Filter):
    """Each kind of SDK line (its logger and template) once per ``window_s``: a collector
    that is down makes the exporter and the batch processor warn per export and per span."""

    def __init__(self, window_s: float = 60.0) -> None:
        super().__init__()
        self.window_s = window_s
        self._last: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        with self._lock:
            last = self._last.get(key)
            if last is not None and record.created - last < self.window_s:
                return False
            self._last[key] = record.created
        return True


def _quiet_sdk_logs() -> None:
    quiet = _OncePerWindow()
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith("opentelemetry"):
            logger = logging.getLogger(name)
            if not any(isinstance(f, _OncePerWindow) for f in logger.filters):
                logger.addFilter(quiet)


def _instrument(provider: TracerProvider) -> list[Any]:
    """asyncpg's query spans (the statement, never its arguments), installed while tracing is on."""
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
    if instrumentor.is_instrumented_by_opentelemetry:
        return []
    instrumentor.instrument(tracer_provider=provider)
    return [instrumentor]


def instrument_app(app: Any) -> None:
    """Server spans for the HTTP API (continuing a caller's ``traceparent``), if tracing is on.

    Probes, metrics and the console's static files are left out; so are the per-message
    ASGI ``send``/``receive`` spans."""
    if state is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=state.provider,
        excluded_urls="/healthz,/readyz,/metrics,/ui/static",
        exclude_spans=["receive", "send"],
    )


def shutdown(timeout_s: float = 5.0) -> None:
    """Export what is queued, within ``timeout_s`` (an endpoint that does not answer costs
    that bound, once), and turn tracing off."""
    global state
    stopping, state = state, None
    if stopping is None:
        return
    for instrumentor in stopping.instrumented:
        with contextlib.suppress(Exception):
            instrumentor.uninstrument()
    done = threading.Thread(target=stopping.provider.shutdown, name="tracing-shutdown", daemon=True)
    done.start()
    done.join(timeout_s)
    if done.is_alive():
        log.warning("tracing: spans not exported within %.0fs at shutdown were dropped", timeout_s)
