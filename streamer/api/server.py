"""Running the application under uvicorn, on the configured host and port."""

from __future__ import annotations

import uvicorn

from streamer.api.app import GalleryReader, create_app
from streamer.runtime.retention import Pruning
from streamer.settings import Settings

__all__ = ["serve"]


def serve(
    settings: Settings, *, gallery: GalleryReader | None = None, pruning: Pruning | None = None
) -> None:
    """Serve until SIGTERM/SIGINT (uvicorn drains open requests, then the lifespan closes)."""
    app = create_app(settings, gallery=gallery, pruning=pruning)
    uvicorn.run(
        app,
        host=settings.api.api_host,
        port=settings.api.api_port,
        log_config=None,  # streamer's logging (STREAMER_LOG_FORMAT) stays in charge
        access_log=False,  # requests are counted in /metrics; paths are not logged
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=int(settings.runtime.shutdown_grace_s),
        server_header=False,
    )
