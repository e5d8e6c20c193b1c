"""The ``streamer`` command line: one program, a subcommand per job."""

from __future__ import annotations

import typer

from streamer.cli import api, dev, forward, gallery, objects, ops, publish, replicate
from streamer.cli._common import TidyGroup

__all__ = ["app", "main"]

app = typer.Typer(
    name="streamer",
    help="Keeps product image galleries in sync at catalog scale, on Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=TidyGroup,
)


# Each subcommand module registers itself here, one line each: the product first, then tooling.
app.command("consume")(gallery.consume)
app.command("publish")(publish.publish)
app.command("serve")(api.serve)
app.add_typer(gallery.gallery_app, name="gallery")
app.add_typer(forward.forward_app, name="forward")
app.add_typer(replicate.replicate_app, name="replicate")
app.add_typer(objects.objects_app, name="objects")
app.add_typer(ops.dlq_app, name="dlq")
app.command("status")(ops.status)
app.add_typer(ops.topics_app, name="topics")
app.add_typer(ops.db_app, name="db")
app.add_typer(dev.app, name="dev")
app.command("demo")(dev.demo)
app.command("loadgen")(dev.loadgen)
app.command("bench")(dev.bench)


def main() -> None:
    app()
