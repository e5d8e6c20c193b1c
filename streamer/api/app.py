"""The ASGI application: routes, what they share, and how it starts and stops.

Started by ``streamer serve`` (``server.serve``) or by tests; every dependency is
built from the settings in the lifespan, and a job's read models come in as
arguments (``gallery``), so the API never imports a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamer import __version__
from streamer.api import console, problems, v1
from streamer.api.auth import TokenBook
from streamer.api.intake import Intake
from streamer.api.metrics import ApiMetrics
from streamer.api.sampling import JobSampler
from streamer.api.waiters import CompletionWaiters
from streamer.contract.codec import Codec
from streamer.errors import StreamerError
from streamer.runtime import tracing
from streamer.runtime.database import Database
from streamer.runtime.metrics import new_registry
from streamer.runtime.retention import Pruning, pruner_for
from streamer.settings import Settings
from streamer.storage.clients import make_s3_client
from streamer.tracking.metrics import TrackingMetrics
from streamer.tracking.relay import CompletionRelay

__all__ = ["GalleryReader", "create_app"]

log = logging.getLogger(__name__)

# (dsn, sku) -> the stored gallery, or None; the CLI hands in the gallery job's reader.
GalleryReader = Callable[[str, str], Awaitable[dict[str, Any] | None]]
HERE = Path(__file__).resolve().parent


class _Metrics:
    """Counts and times every HTTP request by route template (bounded labels), never by path."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "GET")
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - started)


def create_app(
    settings: Settings,
    *,
    gallery: GalleryReader | None = None,
    registry: CollectorRegistry | None = None,
    relay: bool = True,
    pruning: Pruning | None = None,
) -> FastAPI:
    registry = registry if registry is not None else new_registry()
    api_metrics = ApiMetrics(registry)
    tracking_metrics = TrackingMetrics(registry)
    codec = Codec.for_registry(settings.kafka.schema_registry_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The API's statements change no session state (Database says why that matters).
        database = Database(settings.database, session_state=False)
        await database.start()
        intake = Intake(
            kafka=settings.kafka,
            topics=settings.topics,
            api=settings.api,
            database=database,
            codec=codec,
            metrics=api_metrics,
        )
        intake.start()
        app.state.database = database
        app.state.intake = intake
        waiters = CompletionWaiters(
            settings.database, max_waiters=settings.api.api_max_waiters, gauge=api_metrics.waiting
        )
        waiters.start()
        app.state.waiters = waiters
        stop = asyncio.Event()
        app.state.sampler = JobSampler(settings, interval_s=settings.api.api_sample_interval_s)
        sampler_task = asyncio.create_task(app.state.sampler.run(stop))
        relay_task: asyncio.Task[None] | None = None
        if relay:
            app.state.relay = CompletionRelay(
                kafka=settings.kafka,
                database=settings.database,
                topic=settings.topics.import_completed_topic,
                settings=settings.tracking,
                codec=codec,
                metrics=tracking_metrics,
            )
            relay_task = asyncio.create_task(app.state.relay.run(stop))
        pruner = pruner_for(pruning, database, registry)
        pruning_task = asyncio.create_task(pruner.run()) if pruner is not None else None
        log.info("streamer serve: ready")
        try:
            yield
        finally:
            if pruning_task is not None:
                pruning_task.cancel()
                await asyncio.gather(pruning_task, return_exceptions=True)
            stop.set()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(sampler_task, timeout=10)
            if relay_task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(relay_task, timeout=10)
            await waiters.stop()
            await asyncio.get_running_loop().run_in_executor(None, intake.close)
            await database.stop()

    app = FastAPI(
        title="streamer",
        version=__version__,
        summary="Bulk intake, request tracking and the operator console of streamer.",
        description='Every error answer is `{"reason", "detail"}`: a stable reason and a '
        "message for people. Authenticate with `Authorization: Bearer <token>`.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    tracing.instrument_app(app)  # server spans, while tracing is on
    app.state.settings = settings
    app.state.tokens = TokenBook(settings.api.full_tokens(), settings.api.read_tokens())
    app.state.registry = registry
    app.state.gallery = gallery
    app.state.templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.state.s3 = make_s3_client(settings.s3, max_pool_connections=4, signature_version="s3v4")
    app.add_middleware(_Metrics, metrics=api_metrics)
    app.include_router(v1.router)
    app.include_router(console.router)
    app.mount("/ui/static", StaticFiles(directory=str(HERE / "static")), name="static")

    problems.install(app)

    def openapi() -> dict[str, Any]:
        """FastAPI's document plus what it cannot see: the intake's request bodies are read
        by the routes themselves (to bound them while streaming)."""
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            schemas["BulkRequest"] = v1.bulk_body_schema(settings.api.api_max_items)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok\n")

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        reasons = []
        try:
            await request.app.state.database.ping()
        except StreamerError as exc:
            reasons.append(f"postgres: {exc.message}")
        return JSONResponse(
            {"ready": not reasons, "reasons": reasons}, status_code=200 if not reasons else 503
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
