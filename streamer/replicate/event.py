"""The part of a ``GalleryUpdated`` record the replicator needs, validated at the boundary."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from streamer.contract.codec import Codec
from streamer.contract.errors import DecodeError, InvalidEvent

__all__ = ["GalleryImage", "GalleryState", "decode_gallery"]

OUTCOME_TYPE = "GalleryUpdated"


class GalleryImage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    file_path: str
    etag: str
    size: int
    position: int | None = None

    @field_validator("file_path")
    @classmethod
    def _safe(cls, value: str) -> str:
        # The gallery job normalised it; the key at the destination is built from it, so a
        # path that could leave the replica prefix is refused rather than trusted.
        parts = value.split("/")
        if not value.startswith("/") or any(p in ("", ".", "..") for p in parts[1:]):
            raise ValueError(f"{value!r} is not a normalised file path")
        return value


class GalleryState(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    sku: str
    version: int
    deleted: bool
    images: tuple[GalleryImage, ...]


def decode_gallery(codec: Codec, value: bytes | None) -> GalleryState:
    """A ``GalleryUpdated`` from the outcome topic, or an error naming what is wrong with it."""
    decoded = codec.decode(value)
    if decoded.type_name != OUTCOME_TYPE:
        raise DecodeError(
            f"{decoded.type_name} on the outcome topic, which carries {OUTCOME_TYPE}",
            reason="wrong_topic",
        )
    data: dict[str, Any] = decoded.data
    try:
        return GalleryState.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise InvalidEvent(f"invalid GalleryUpdated: {problems}") from exc
