"""The gallery job's settings: its consumer group, ETag source and gallery rules."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from streamer.config import Section

__all__ = ["GallerySettings"]


class GallerySettings(Section):
    group_id: str = "streamer"
    etag_source: Literal["auto", "head", "list", "index"] = "auto"
    verify_producer_etag: bool = True
    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1)
    image_limit: int | None = Field(None, ge=0, description="0 = gallery sync off, N = keep N")

    @field_validator("group_id")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()
