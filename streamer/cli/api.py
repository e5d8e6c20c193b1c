"""``streamer serve``: the intake API, request tracking and the operator console."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from streamer.cli._common import err_console, fail_cleanly, settings_from, traced

if TYPE_CHECKING:
    from streamer.settings import Settings

__all__ = ["serve"]


def serve(
    host: Annotated[
        str | None, typer.Option("--host", help="bind address (STREAMER_API_HOST, 127.0.0.1)")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="port (STREAMER_API_PORT, 8080)")
    ] = None,
) -> None:
    """Serve /v1 (bulk intake, tracking), /ui/ (console), /docs, /healthz, /readyz, /metrics.

    Tokens come from STREAMER_API_TOKENS (full access) and STREAMER_API_READ_TOKENS
    (read-only), comma-separated; they are never printed. Also publishes one
    ImportCompleted per finished bulk (one serve process leads; the others stand by).
    """
    from streamer.api.server import serve as run_server
    from streamer.gallery.export import load_gallery
    from streamer.ops.retention import pruning

    settings = settings_from(api_host=host, api_port=port)
    if not settings.api.full_tokens():
        err_console.print(
            "[red]error:[/red] STREAMER_API_TOKENS is not set: every request would be refused. "
            "Set one or more long random tokens (comma-separated)."
        )
        raise typer.Exit(2)
    with fail_cleanly(), traced("streamer-api"):
        _check_broker(settings)
        run_server(settings, gallery=load_gallery, pruning=pruning(settings.retention))


def _check_broker(settings: Settings) -> None:
    """Refused credentials or certificates end the start (librdkafka would retry them
    forever); a broker that does not answer yet is the intake's 503 until it does."""
    from streamer.runtime.connection import check_broker
    from streamer.runtime.errors import BrokerUnavailable

    topics = settings.topics
    try:
        check_broker(settings.kafka, topics=(topics.product_topic, topics.media_topic))
    except BrokerUnavailable as exc:
        err_console.print(f"[yellow]warning:[/yellow] {exc}; the intake answers 503 meanwhile")
