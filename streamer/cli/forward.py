"""``streamer forward`` (the webhook forwarder) and ``streamer forward test-connection``."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from streamer.cli._common import err_console, fail_cleanly, run, run_job, settings_from
from streamer.forward.job import JOB

__all__ = ["forward_app", "register"]

forward_app = typer.Typer(
    help=(
        "Run a webhook forwarder worker until SIGTERM/SIGINT: gallery changes delivered to "
        "STREAMER_WEBHOOK_URL, signed (Standard Webhooks)."
    ),
)


@forward_app.callback(invoke_without_command=True)
def forward(
    ctx: typer.Context,
    group_id: Annotated[
        str | None, typer.Option("--group-id", help="Consumer group (STREAMER_FORWARD_GROUP_ID)")
    ] = None,
    bootstrap: Annotated[
        str | None, typer.Option("--bootstrap", help="Kafka bootstrap servers")
    ] = None,
    metrics_port: Annotated[int | None, typer.Option("--metrics-port", help="0 disables")] = None,
) -> None:
    """Run a forwarder worker until SIGTERM/SIGINT (the batch in hand is delivered first)."""
    if ctx.invoked_subcommand is not None:
        return
    run_job(JOB, forward_group_id=group_id, kafka_bootstrap=bootstrap, metrics_port=metrics_port)


@forward_app.command("test-connection")
def connection_test(
    url: Annotated[
        str | None, typer.Option("--url", help="instead of STREAMER_WEBHOOK_URL")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the result as JSON on stdout")
    ] = False,
) -> None:
    """Send one signed test event; report status, latency and whether the receiver accepted it."""
    from streamer.forward.probe import send_test_event

    settings = settings_from(require=JOB.sections, webhook_url=url)
    if not settings.forward.webhook_url:
        err_console.print("[red]error:[/red] STREAMER_WEBHOOK_URL is not set (or pass --url)")
        raise typer.Exit(2)
    with fail_cleanly():
        result = run(send_test_event(settings.forward))
    a = result.answer
    status = str(a.status) if a.status is not None else a.result
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "url": settings.forward.origin,
                    "webhook_id": result.webhook_id,
                    "status": status,
                    "latency_ms": round(a.elapsed_s * 1000, 1),
                    "verdict": result.verdict,
                    "ok": result.ok,
                    "response": a.excerpt[:300] if a.excerpt else None,
                }
            )
        )
        if not result.ok:
            raise typer.Exit(1)
        return
    typer.echo(f"POST {settings.forward.origin}  webhook-id {result.webhook_id}")
    typer.echo(f"status   {status}")
    typer.echo(f"latency  {a.elapsed_s * 1000:.1f} ms")
    typer.echo(f"verdict  {result.verdict}")
    if a.excerpt:
        typer.echo(f"response {a.excerpt[:300]}")
    if not result.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(forward_app, name="forward")
