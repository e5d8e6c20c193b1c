"""Events as the consumer's hot path carries them: plain frozen values, validated in plain
Python, without a pydantic model per image.

The rules are the contract's (``events.normalize_file_path``, ``normalize_roles``,
the limits): ``lean_event`` applies them to an Avro-decoded record and gives the same
result as ``parse_event`` (the pydantic models, kept for JSON input and the tools),
only faster. It accepts what it recognises as valid; anything else (a bad field, an
unexpected shape) goes through ``parse_event``, which either raises the canonical
``InvalidEvent`` (same reason, same message) or validates what the fast path was too
strict for. So a lean event is never laxer than the model, and its errors are the
model's. ``tests/unit/test_lean.py`` checks that equivalence on generated and
hand-written records, bad ones included.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, NamedTuple

from pydantic_core import to_json

from streamer.contract.errors import ImageInvalid, InvalidEvent
from streamer.contract.events import (
    MAX_IMAGES_PER_EVENT,
    MAX_LABEL_CHARS,
    MAX_SKU_CHARS,
    MAX_VERSION,
    POSITION_RANGE,
    EventType,
    GalleryMode,
    Image,
    MediaGalleryChanged,
    ProductChanged,
    ProductOp,
    normalize_file_path,
    normalize_roles,
    parse_event,
    utc_millis,
)

__all__ = [
    "RECHECK",
    "GalleryInput",
    "LeanEvent",
    "LeanImage",
    "LeanMedia",
    "LeanProduct",
    "LeanRecheck",
    "PendingMedia",
    "lean_common",
    "lean_event",
    "lean_fingerprint",
    "lean_image",
    "lean_of",
    "lean_recheck",
]

_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_CONTROL = frozenset(chr(c) for c in (*range(0x20), *range(0x7F, 0xA0)))


class LeanImage(NamedTuple):
    """``events.Image``'s fields, in its order (the fingerprint's JSON depends on it). A named
    tuple: an event carries several, and it builds in a third of a frozen dataclass's time."""

    file_path: str
    label: str | None = None
    position: int | None = None
    disabled: bool = False
    roles: tuple[str, ...] = ()
    unknown_roles: tuple[str, ...] = ()
    etag: str | None = None
    invalid_reason: str | None = None
    invalid_message: str | None = None

    @property
    def valid(self) -> bool:
        return self.invalid_reason is None


@dataclass(frozen=True, slots=True)
class _LeanCommon:
    """The fields every event carries, in the models' order."""

    event_id: str
    sku: str
    version: int
    occurred_at: datetime
    source: str
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class LeanProduct(_LeanCommon):
    type: EventType = EventType.PRODUCT
    op: ProductOp = ProductOp.UPSERT
    name: str | None = None
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class LeanMedia(_LeanCommon):
    type: EventType = EventType.MEDIA
    mode: GalleryMode = GalleryMode.UPSERT
    images: tuple[LeanImage, ...] = ()
    # A digest of the wire bytes of ``mode`` and ``images`` (with the writer schema and the
    # rules they were judged by), when the event came from Avro: not part of the event's
    # content (nor of its fingerprint), it lets a stored gallery say which payload made it.
    digest: bytes | None = None


@dataclass(frozen=True, slots=True)
class PendingMedia(_LeanCommon):
    """A media event of which only the fields before ``mode`` are decoded (and validated as
    ``lean_event`` validates them), with the digest of the rest of its bytes.

    A re-sync sends the payload that made the stored gallery again: when the digest equals
    the stored gallery's, the images are the ones stored, and the fold can judge the event
    without them. Anything else asks for ``full()``, the event as ``lean_event`` gives it:
    its bytes decoded fine when the stored digest was made, with the same schema, rules
    and code, so they decode the same way now.
    """

    type: EventType = EventType.MEDIA
    digest: bytes = b""
    value: bytes = b""
    decoder: Callable[[bytes], object] | None = None

    def full(self) -> LeanMedia:
        if self.decoder is None:
            raise ValueError(f"event {self.event_id}: no decoder to decode the images with")
        event = self.decoder(self.value)
        if not isinstance(event, LeanMedia):
            raise TypeError(f"event {self.event_id} decoded to {type(event).__name__}")
        return replace(event, digest=self.digest)


LeanEvent = LeanProduct | LeanMedia

RECHECK = "GalleryRecheck"


@dataclass(frozen=True, slots=True)
class LeanRecheck:
    """A re-check of a stored gallery's objects (``GalleryRecheck``): no version of its own,
    no request; it changes what the objects say, never the gallery's versions."""

    event_id: str
    sku: str
    occurred_at: datetime
    source: str
    file_paths: tuple[str, ...]
    request_id: None = None


GalleryInput = LeanProduct | LeanMedia | LeanRecheck | PendingMedia

_PRODUCT_FIELDS = frozenset(f for f in LeanProduct.__dataclass_fields__ if f != "type")
_MEDIA_FIELDS = frozenset(f for f in LeanMedia.__dataclass_fields__ if f not in ("type", "digest"))
_OPS = {op.value: op for op in ProductOp}
_MODES = {mode.value: mode for mode in GalleryMode}


class _Refused(Exception):
    """The fast path does not vouch for this record: ``parse_event`` decides."""


def lean_image(raw: Mapping[str, Any]) -> LeanImage:
    """``events.Image``'s normalisation: a bad path or label marks the image invalid."""
    path = raw["file_path"]
    label = raw.get("label")
    position = raw.get("position")
    disabled = raw.get("disabled", False)
    etag = raw.get("etag")
    roles = raw.get("roles") or ()
    if (
        type(path) is not str
        or (label is not None and type(label) is not str)
        or (
            position is not None
            and (
                type(position) is not int or not POSITION_RANGE[0] <= position <= POSITION_RANGE[1]
            )
        )
        or type(disabled) is not bool
        or (etag is not None and type(etag) is not str)
    ):
        raise _Refused
    for role in roles:
        if type(role) is not str:
            raise _Refused
    reason = message = None
    try:
        path = normalize_file_path(path)
    except ImageInvalid as exc:
        reason, message = exc.reason, exc.message
    managed, unknown = normalize_roles(list(roles))
    if label is not None and len(label) > MAX_LABEL_CHARS:
        reason = reason or "invalid_label"
        message = message or (
            f"label is {len(label)} characters, over the {MAX_LABEL_CHARS}-character limit"
        )
        label = label[:MAX_LABEL_CHARS]
    if etag is not None:
        etag = etag.strip('"') or None
    return LeanImage(path, label, position, disabled, managed, unknown, etag, reason, message)


def _event_id(value: Any) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    if type(value) is not str:
        raise _Refused
    if _CANONICAL_UUID.fullmatch(value):
        return value  # what str(uuid.UUID(value)) gives, at a tenth of its cost
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise _Refused from None


def _sku(value: Any) -> str:
    if type(value) is not str:
        raise _Refused
    sku = value.strip()
    if not sku or len(sku) > MAX_SKU_CHARS or not _CONTROL.isdisjoint(sku):
        raise _Refused
    return sku


def lean_common(
    record: Mapping[str, Any],
) -> tuple[str, str, int, datetime, str, str | None] | None:
    """The fields every event starts with, validated as ``lean_event`` validates them; None
    when the fast path does not vouch for them (``lean_event`` then decides)."""
    try:
        return _common(record)
    except (_Refused, KeyError, TypeError, AttributeError):
        return None


def _common(record: Mapping[str, Any]) -> tuple[str, str, int, datetime, str, str | None]:
    version, occurred_at, source = record["version"], record["occurred_at"], record["source"]
    request_id = record.get("request_id")
    if (
        type(version) is not int
        or not 0 <= version <= MAX_VERSION
        or not isinstance(occurred_at, datetime)
        or type(source) is not str
        or not 1 <= len(source) <= 255
        or (request_id is not None and (type(request_id) is not str or len(request_id) > 255))
    ):
        raise _Refused
    return (
        _event_id(record["event_id"]),
        _sku(record["sku"]),
        version,
        utc_millis(occurred_at),
        source,
        request_id,
    )


def _fast(type_name: str, record: Mapping[str, Any]) -> LeanEvent:
    if type_name == EventType.MEDIA.value:
        if not _MEDIA_FIELDS.issuperset(record.keys() - {"type"}):
            raise _Refused
        images = record.get("images", ())
        mode = _MODES.get(record.get("mode", "UPSERT"))
        if type(images) is not list or len(images) > MAX_IMAGES_PER_EVENT or mode is None:
            raise _Refused
        return LeanMedia(
            *_common(record),
            mode=mode,
            images=tuple([lean_image(i) for i in images]),
        )
    if type_name == EventType.PRODUCT.value:
        if not _PRODUCT_FIELDS.issuperset(record.keys() - {"type"}):
            raise _Refused
        op = _OPS.get(record.get("op", "UPSERT"))
        name, enabled = record.get("name"), record.get("enabled", True)
        if op is None or (name is not None and type(name) is not str) or type(enabled) is not bool:
            raise _Refused
        return LeanProduct(*_common(record), op=op, name=name, enabled=enabled)
    raise _Refused


def lean_event(type_name: str, record: Mapping[str, Any]) -> LeanEvent:
    """The event of a decoded record, or ``InvalidEvent`` exactly as ``parse_event`` raises it."""
    try:
        return _fast(type_name, record)
    except (_Refused, KeyError, TypeError, AttributeError):
        return lean_of(parse_event(type_name, dict(record)))


def lean_recheck(record: Mapping[str, Any]) -> LeanRecheck:
    """The re-check of a decoded ``GalleryRecheck`` record, or ``InvalidEvent``."""
    try:
        paths = record["file_paths"]
        if type(paths) is not list or not 1 <= len(paths) <= MAX_IMAGES_PER_EVENT:
            raise _Refused
        source = record["source"]
        if type(source) is not str or not 1 <= len(source) <= 255:
            raise _Refused
        occurred_at = record["occurred_at"]
        if not isinstance(occurred_at, datetime):
            raise _Refused
        return LeanRecheck(
            _event_id(record["event_id"]),
            _sku(record["sku"]),
            utc_millis(occurred_at),
            source,
            tuple(dict.fromkeys(normalize_file_path(p) for p in paths)),
        )
    except (_Refused, KeyError, TypeError, ImageInvalid) as exc:
        raise InvalidEvent(
            f"GalleryRecheck is invalid: {getattr(exc, 'message', None) or type(exc).__name__}",
            reason="invalid_recheck",
        ) from None


def lean_of(event: ProductChanged | MediaGalleryChanged) -> LeanEvent:
    """The lean value of a validated model (JSON input, tests)."""
    if isinstance(event, ProductChanged):
        return LeanProduct(
            event.event_id,
            event.sku,
            event.version,
            event.occurred_at,
            event.source,
            event.request_id,
            op=event.op,
            name=event.name,
            enabled=event.enabled,
        )
    return LeanMedia(
        event.event_id,
        event.sku,
        event.version,
        event.occurred_at,
        event.source,
        event.request_id,
        mode=event.mode,
        images=tuple(_lean_image_of(i) for i in event.images),
    )


def _lean_image_of(image: Image) -> LeanImage:
    return LeanImage(
        image.file_path,
        image.label,
        image.position,
        image.disabled,
        image.roles,
        image.unknown_roles,
        image.etag,
        image.invalid_reason,
        image.invalid_message,
    )


def lean_fingerprint(event: GalleryInput) -> str:
    """``events.fingerprint`` of the same event: the model's JSON (its fields in its order,
    serialised by pydantic-core), so the same digest."""
    if isinstance(event, PendingMedia):
        event = event.full()
    data: dict[str, Any] = {
        name: getattr(event, name) for name in event.__dataclass_fields__ if name != "digest"
    }
    if isinstance(event, LeanMedia):
        data["images"] = [image._asdict() for image in event.images]
    return hashlib.sha256(to_json(data)).hexdigest()[:32]
