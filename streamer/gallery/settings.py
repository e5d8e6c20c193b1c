"""The gallery job's settings: its consumer group, ETag source and gallery rules."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from streamer.config import NonBlank, Section

__all__ = ["GallerySettings"]


class GallerySettings(Section):
    group_id: NonBlank = "streamer"
    etag_source: Literal["auto", "head", "list", "index"] = "auto"
    verify_producer_etag: bool = True
    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1)
    image_limit: int | None = Field(None, ge=0, description="0 = gallery sync off, N = keep N")
