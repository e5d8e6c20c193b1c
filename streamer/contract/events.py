"""Event models and the contract's normalisation rules, with no I/O.

The Avro schemas in ``schemas/`` are the wire contract; these models are what
the rest of the code works with once bytes are decoded. Validation failures
carry a stable ``reason`` code (``InvalidEvent.reason``) and a message a person
understands. A bad image (for example a path with ``..``) does not invalidate
its event: it is marked with ``invalid_reason`` so the valid images of the same
event can still be applied, as DESIGN.md asks.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from streamer.contract.errors import ImageInvalid, InvalidEvent

__all__ = [
    "MANAGED_ROLES",
    "MAX_IMAGES_PER_EVENT",
    "MAX_LABEL_CHARS",
    "MAX_PATH_BYTES",
    "MAX_SKU_CHARS",
    "MAX_VERSION",
    "POSITION_RANGE",
    "ROLE_ALIASES",
    "Event",
    "EventType",
    "GalleryMode",
    "Image",
    "MediaGalleryChanged",
    "ProductChanged",
    "ProductOp",
    "fingerprint",
    "normalize_file_path",
    "normalize_roles",
    "parse_event",
]

MANAGED_ROLES: tuple[str, ...] = ("image", "small_image", "thumbnail", "swatch_image")
ROLE_ALIASES: dict[str, str] = {"base": "image"}
MAX_SKU_CHARS = 64  # Magento's catalog_product_entity.sku is varchar(64)
MAX_PATH_BYTES = 255
MAX_LABEL_CHARS = 255
MAX_IMAGES_PER_EVENT = 1000
MAX_VERSION = 2**63 - 1  # Avro long, PostgreSQL bigint
POSITION_RANGE = (-(2**31), 2**31 - 1)  # Avro int, PostgreSQL integer
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc


class EventType(StrEnum):
    PRODUCT = "ProductChanged"
    MEDIA = "MediaGalleryChanged"


class ProductOp(StrEnum):
    UPSERT = "UPSERT"
    DELETE = "DELETE"


class GalleryMode(StrEnum):
    UPSERT = "UPSERT"
    REPLACE = "REPLACE"


def normalize_file_path(raw: str) -> str:
    """Return the path with exactly one leading slash, or raise ``ImageInvalid``.

    Rejected rather than repaired: ``..`` segments, backslashes, empty segments,
    control characters and paths over 255 bytes, because each of them either
    escapes the prefix or names a different object than the source meant.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise ImageInvalid("file_path is empty", reason="invalid_file_path")
    if _CONTROL.search(raw):
        raise ImageInvalid(
            f"file_path {raw!r} contains a control character", reason="invalid_file_path"
        )
    if "\\" in raw:
        raise ImageInvalid(f"file_path {raw!r} contains a backslash", reason="invalid_file_path")
    path = "/" + raw.lstrip("/")
    segments = path[1:].split("/")
    if ".." in segments or "." in segments:
        raise ImageInvalid(
            f"file_path {raw!r} contains a '..' or '.' segment", reason="invalid_file_path"
        )
    if "" in segments:
        raise ImageInvalid(
            f"file_path {raw!r} contains an empty segment", reason="invalid_file_path"
        )
    if len(path.encode("utf-8")) > MAX_PATH_BYTES:
        raise ImageInvalid(
            f"file_path is {len(path.encode('utf-8'))} bytes, over the {MAX_PATH_BYTES}-byte limit",
            reason="invalid_file_path",
        )
    return path


def normalize_roles(roles: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split roles into (managed, unknown); aliases resolved, order kept, duplicates dropped."""
    managed: list[str] = []
    unknown: list[str] = []
    for role in roles:
        name = ROLE_ALIASES.get(role.strip().lower(), role.strip().lower())
        if name in MANAGED_ROLES:
            if name not in managed:
                managed.append(name)
        elif role not in unknown:
            unknown.append(role)
    return tuple(managed), tuple(unknown)


class Image(BaseModel):
    """One image as the source sees it, normalised; ``invalid_reason`` set when unusable."""

    model_config = ConfigDict(frozen=True)

    file_path: str
    label: str | None = None
    position: int | None = Field(None, ge=POSITION_RANGE[0], le=POSITION_RANGE[1])
    disabled: bool = False
    roles: tuple[str, ...] = ()
    unknown_roles: tuple[str, ...] = ()
    etag: str | None = None
    invalid_reason: str | None = None
    invalid_message: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("invalid_reason") is None and "file_path" in data:
            try:
                data["file_path"] = normalize_file_path(data["file_path"])
            except ImageInvalid as exc:
                data["invalid_reason"] = exc.reason
                data["invalid_message"] = exc.message
        if "roles" in data and "unknown_roles" not in data:
            managed, unknown = normalize_roles(list(data["roles"] or []))
            data["roles"], data["unknown_roles"] = managed, unknown
        label = data.get("label")
        if isinstance(label, str) and len(label) > MAX_LABEL_CHARS:
            data["invalid_reason"] = data.get("invalid_reason") or "invalid_label"
            data["invalid_message"] = data.get("invalid_message") or (
                f"label is {len(label)} characters, over the {MAX_LABEL_CHARS}-character limit"
            )
            data["label"] = label[:MAX_LABEL_CHARS]
        if isinstance(data.get("etag"), str):
            data["etag"] = data["etag"].strip('"') or None
        return data

    @property
    def valid(self) -> bool:
        return self.invalid_reason is None


def utc_millis(value: datetime) -> datetime:
    """UTC, truncated to the millisecond the wire format carries, so a round trip is exact."""
    if value.tzinfo is UTC and not value.microsecond % 1000:
        return value  # as Avro's timestamp-millis decodes: already so
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return aware.replace(microsecond=aware.microsecond // 1000 * 1000)


class _EventBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str
    sku: str
    version: int = Field(ge=0, le=MAX_VERSION)
    occurred_at: datetime
    source: str = Field(min_length=1, max_length=255)
    request_id: str | None = Field(None, max_length=255)

    @field_validator("event_id", mode="before")
    @classmethod
    def _uuid(cls, value: Any) -> str:
        if isinstance(value, uuid.UUID):
            return str(value)
        try:
            return str(uuid.UUID(str(value)))
        except ValueError:
            raise ValueError(f"event_id {value!r} is not a UUID") from None

    @field_validator("sku")
    @classmethod
    def _sku(cls, value: str) -> str:
        sku = value.strip()
        if not sku:
            raise ValueError("sku is empty")
        if len(sku) > MAX_SKU_CHARS:
            raise ValueError(
                f"sku is {len(sku)} characters, over the {MAX_SKU_CHARS}-character limit"
            )
        if _CONTROL.search(sku):
            raise ValueError("sku contains a control character")
        return sku

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return utc_millis(value)


class ProductChanged(_EventBase):
    """The product was upserted or deleted; a delete removes the gallery and leaves a tombstone."""

    type: Literal[EventType.PRODUCT] = EventType.PRODUCT
    op: ProductOp = ProductOp.UPSERT
    name: str | None = None
    enabled: bool = True


class MediaGalleryChanged(_EventBase):
    """The SKU's gallery as the source sees it."""

    type: Literal[EventType.MEDIA] = EventType.MEDIA
    mode: GalleryMode = GalleryMode.UPSERT
    images: list[Image] = Field(default_factory=list)

    @field_validator("images")
    @classmethod
    def _bounded(cls, images: list[Image]) -> list[Image]:
        if len(images) > MAX_IMAGES_PER_EVENT:
            raise PydanticCustomError(
                "too_many_images",
                "{count} images, over the {limit}-image limit per event",
                {"count": len(images), "limit": MAX_IMAGES_PER_EVENT},
            )
        return images

    @property
    def invalid_images(self) -> list[Image]:
        return [img for img in self.images if not img.valid]


Event = Annotated[ProductChanged | MediaGalleryChanged, Field(discriminator="type")]

_FIELD_REASONS = {"sku": "invalid_sku", "event_id": "invalid_event_id"}
_CUSTOM_REASONS = {"too_many_images"}


def parse_event(
    event_type: EventType | str, data: dict[str, Any]
) -> ProductChanged | MediaGalleryChanged:
    """Validate a decoded record into an event model, or raise ``InvalidEvent`` naming the field."""
    try:
        kind = EventType(event_type)
    except ValueError:
        raise InvalidEvent(
            f"unknown event type {event_type!r}", reason="unknown_event_type"
        ) from None
    model = ProductChanged if kind is EventType.PRODUCT else MediaGalleryChanged
    payload = {k: v for k, v in data.items() if k != "type"}
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        if first["type"] in _CUSTOM_REASONS:
            reason = first["type"]
        elif first["type"] == "missing":
            reason = "missing_field"
        elif first["type"] == "extra_forbidden":
            reason = "unknown_field"
        else:
            reason = _FIELD_REASONS.get(field, "invalid_event")
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise InvalidEvent(f"invalid {kind.value}: {details}", reason=reason) from exc


def fingerprint(event: ProductChanged | MediaGalleryChanged) -> str:
    """A digest of the event's content, to tell a harmless re-delivery from a reused event_id."""
    return hashlib.sha256(event.model_dump_json().encode()).hexdigest()[:32]
