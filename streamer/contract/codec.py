"""Avro on the wire, both framings of DESIGN.md, decoded from whichever the bytes carry.

- Confluent framing (magic byte 0 + 4-byte big-endian schema id) when a Schema
  Registry is configured; writer schemas are registered under ``<topic>-value``.
- Avro single-object encoding (C3 01 + 8-byte little-endian CRC-64-AVRO
  fingerprint) otherwise; the writer schema is found among the schemas of this
  repository, current and history.

Either way the record is resolved against the current reader schema of the
same name, so events written with any earlier schema version still decode.
Anything unreadable raises ``DecodeError`` with a specific ``reason``.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import struct
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit, urlunsplit

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import to_parsing_canonical_form

from streamer.contract.errors import DecodeError, SchemaRegistryUnavailable, SchemaRejected
from streamer.contract.events import EventType, MediaGalleryChanged, ProductChanged, parse_event
from streamer.contract.lean import RECHECK, GalleryInput, LeanEvent, lean_event, lean_recheck
from streamer.contract.schemas import KnownSchema, current_schemas, known_schemas

__all__ = ["SINGLE_OBJECT_MAGIC", "Codec", "DecodedRecord", "event_record", "registry_config"]

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0
_ID = struct.Struct(">I")
# Confluent's answers to a schema it will never take: 409 incompatible, 422 invalid.
_REFUSED = (409, 422)
# Apicurio prefixes its messages with the Java exception's class name.
_JAVA_EXCEPTION = re.compile(r"^(?:[a-z_$][\w$]*\.)+[A-Z][\w$]*(?:Exception|Error): ")


class DecodedRecord(NamedTuple):
    type_name: str
    data: dict[str, Any]
    writer_schema_id: str  # "sr:<id>" or "fp:<hex>"


def event_record(event: ProductChanged | MediaGalleryChanged) -> dict[str, Any]:
    """The Avro record of an event model (the inverse of ``parse_event``)."""
    data = event.model_dump(mode="python", exclude={"type"})
    if isinstance(event, MediaGalleryChanged):
        data["images"] = [
            {
                "file_path": img.file_path,
                "label": img.label,
                "position": img.position,
                "disabled": img.disabled,
                "roles": [*img.roles, *img.unknown_roles],
                "etag": img.etag,
            }
            for img in event.images
        ]
    return data


@lru_cache(maxsize=64)
def _parse_registry_schema(schema_str: str) -> tuple[str, Any]:
    raw = json.loads(schema_str)
    return str(raw.get("name", "")).rsplit(".", 1)[-1], parse_schema(raw)


def registry_config(url: str) -> dict[str, str]:
    """The registry client's configuration for ``url``. Credentials in the URL
    (``https://key:secret@host``) move to ``basic.auth.user.info``: the client's HTTP library
    logs every request's URL at INFO, and the secret must not be in it."""
    urls = [urlsplit(u.strip()) for u in url.split(",")]
    user, password = urls[0].username, urls[0].password
    if user is None and password is None:
        return {"url": url}
    plain = ",".join(urlunsplit(u._replace(netloc=u.netloc.rpartition("@")[2])) for u in urls)
    return {
        "url": plain,
        "basic.auth.user.info": f"{unquote(user or '')}:{unquote(password or '')}",
    }


def _media_fingerprint() -> bytes:
    return current_schemas()[EventType.MEDIA.value].fingerprint


@lru_cache(maxsize=1)
def _current_media_canonical() -> str:
    return current_schemas()[EventType.MEDIA.value].canonical


# The current MediaGalleryChanged's fields before ``mode``, as ``media_prefix`` reads them.
_PREFIX_LAYOUT = (
    ("event_id", {"type": "string", "logicalType": "uuid"}),
    ("sku", "string"),
    ("version", "long"),
    ("occurred_at", {"type": "long", "logicalType": "timestamp-millis"}),
    ("source", "string"),
    ("request_id", ["null", "string"]),
    ("mode", None),
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@lru_cache(maxsize=1)
def _prefix_readable() -> bool:
    """Whether the current schema still starts as ``_PREFIX_LAYOUT`` says (else every media
    event is decoded in full)."""
    fields = current_schemas()[EventType.MEDIA.value].raw["fields"]
    return len(fields) >= len(_PREFIX_LAYOUT) and all(
        f["name"] == name and (kind is None or f["type"] == kind)
        for f, (name, kind) in zip(fields, _PREFIX_LAYOUT, strict=False)
    )


def _long_at(b: bytes, i: int) -> tuple[int, int]:
    """Avro's long (zig-zag varint) at ``i``, and the offset after it."""
    byte = b[i]
    i += 1
    n, shift = byte & 0x7F, 7
    while byte & 0x80:
        byte = b[i]
        i += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if shift > 70:
            raise ValueError("varint longer than a long")
    return (n >> 1) ^ -(n & 1), i


def _string_at(b: bytes, i: int) -> tuple[str, int]:
    n, i = _long_at(b, i)
    end = i + n
    if n < 0 or end > len(b):
        raise ValueError("string past the end of the message")
    return b[i:end].decode("utf-8"), end


def _read_prefix(b: bytes, i: int) -> tuple[dict[str, Any], int]:
    """The fields ``_PREFIX_LAYOUT`` names, as fastavro decodes them (an event id's text, a
    UTC datetime), read by hand: a fifth of fastavro's cost for a few fields of a record."""
    event_id, i = _string_at(b, i)
    sku, i = _string_at(b, i)
    version, i = _long_at(b, i)
    millis, i = _long_at(b, i)
    source, i = _string_at(b, i)
    branch, i = _long_at(b, i)
    request_id: str | None = None
    if branch == 1:
        request_id, i = _string_at(b, i)
    elif branch != 0:
        raise ValueError(f"union branch {branch} of request_id")
    record = {
        "event_id": event_id,
        "sku": sku,
        "version": version,
        "occurred_at": _EPOCH + timedelta(milliseconds=millis),
        "source": source,
        "request_id": request_id,
    }
    return record, i


class Codec:
    """Encodes events and decodes messages; a registry client is passed in, never created here."""

    def __init__(self, registry: Any | None = None) -> None:
        self.registry = registry
        self._subject_ids: dict[tuple[str, str], int] = {}
        self._id_schemas: dict[int, tuple[str, Any]] = {}
        self._media_ids: dict[int, bool] = {}

    @classmethod
    def for_registry(cls, url: str | None) -> Codec:
        """A codec with the Schema Registry at ``url``, or single-object encoding when unset."""
        if not url:
            return cls()
        from confluent_kafka.schema_registry import SchemaRegistryClient

        # new_client gives the in-memory registry for mock:// URLs (tests, demos).
        return cls(SchemaRegistryClient.new_client(registry_config(url)))

    # -- encode -----------------------------------------------------------------

    def register(self, topic: str, type_name: str) -> None:
        """Register the writer schema of ``type_name`` for ``topic`` now, not at the first
        encode: a refusal (``SchemaRejected``) or an unreachable registry then ends the caller
        before it has produced anything. Nothing to do without a registry."""
        if self.registry is not None:
            self._schema_id(topic, current_schemas()[type_name])

    def _schema_id(self, topic: str, schema: KnownSchema) -> int:
        key = (topic, schema.name)
        if key not in self._subject_ids:
            from confluent_kafka.schema_registry import Schema
            from confluent_kafka.schema_registry.error import SchemaRegistryError

            subject = f"{topic}-value"
            try:
                schema_id = self.registry.register_schema(  # type: ignore[union-attr]
                    subject, Schema(json.dumps(schema.raw), "AVRO")
                )
            except SchemaRegistryError as exc:
                if exc.http_status_code in _REFUSED:
                    raise SchemaRejected(self._refusal(schema.name, subject, exc)) from exc
                raise SchemaRegistryUnavailable(f"schema registration failed: {exc}") from exc
            except Exception as exc:
                raise SchemaRegistryUnavailable(f"schema registry unreachable: {exc}") from exc
            self._subject_ids[key] = schema_id
            self._id_schemas[schema_id] = (schema.name, schema.parsed)
        return self._subject_ids[key]

    def _refusal(self, name: str, subject: str, exc: Any) -> str:
        """What the operator needs: which schema, which subject, why, and under which level."""
        detail = _JAVA_EXCEPTION.sub("", str(exc.error_message or "")).strip()
        if exc.http_status_code == 409:
            why = "it is incompatible with the versions registered there"
            level = self._compatibility(subject)
            if level:
                why += f" under {level} compatibility"
        else:
            why = "the registry finds it invalid"
        return (
            f"the schema registry refused the {name} schema for subject {subject}: {why} ({detail})"
        )

    def _compatibility(self, subject: str) -> str | None:
        """The subject's compatibility level, else the registry's default; None if unknown."""
        for args in ((subject,), ()):
            with contextlib.suppress(Exception):
                level = self.registry.get_compatibility(*args)  # type: ignore[union-attr]
                if level:
                    return str(level)
        return None

    def encode_record(self, record: dict[str, Any], *, type_name: str, topic: str) -> bytes:
        schema = current_schemas()[type_name]
        buf = io.BytesIO()
        if self.registry is not None:
            buf.write(bytes([CONFLUENT_MAGIC]) + _ID.pack(self._schema_id(topic, schema)))
        else:
            buf.write(SINGLE_OBJECT_MAGIC + schema.fingerprint)
        schemaless_writer(buf, schema.parsed, record)
        return buf.getvalue()

    def encode(self, event: ProductChanged | MediaGalleryChanged, *, topic: str) -> bytes:
        return self.encode_record(event_record(event), type_name=event.type.value, topic=topic)

    def encode_outcome(self, record: dict[str, Any], *, topic: str) -> bytes:
        return self.encode_record(record, type_name="GalleryUpdated", topic=topic)

    # -- decode -----------------------------------------------------------------

    def _registry_schema(self, schema_id: int) -> tuple[str, Any]:
        if schema_id in self._id_schemas:
            return self._id_schemas[schema_id]
        if self.registry is None:
            raise DecodeError(
                f"message framed for schema id {schema_id} but no schema registry is configured",
                reason="unknown_schema_id",
            )
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            found = self.registry.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404 or exc.error_code in (40403, 404):
                raise DecodeError(
                    f"schema id {schema_id} is unknown to the registry", reason="unknown_schema_id"
                ) from exc
            raise SchemaRegistryUnavailable(f"schema registry error: {exc}") from exc
        except Exception as exc:
            raise SchemaRegistryUnavailable(f"schema registry unreachable: {exc}") from exc
        resolved = _parse_registry_schema(found.schema_str)
        self._id_schemas[schema_id] = resolved
        return resolved

    def decode(self, value: bytes | None) -> DecodedRecord:
        if value is None:
            raise DecodeError(
                "message value is null (a tombstone carries no event)", reason="null_value"
            )
        if len(value) < 5:
            raise DecodeError(
                f"message is {len(value)} bytes, too short for any framing", reason="truncated"
            )
        if value[0] == CONFLUENT_MAGIC:
            (schema_id,) = _ID.unpack_from(value, 1)
            name, writer = self._registry_schema(schema_id)
            offset, writer_id = 5, f"sr:{schema_id}"
        elif value[:2] == SINGLE_OBJECT_MAGIC:
            if len(value) < 10:
                raise DecodeError("single-object header is truncated", reason="truncated")
            fp = value[2:10]
            known = known_schemas().get(fp)
            if known is None:
                raise DecodeError(
                    f"writer schema fingerprint {fp.hex()} is not a known schema",
                    reason="unknown_schema",
                )
            name, writer = known.name, known.parsed
            offset, writer_id = 10, f"fp:{fp.hex()}"
        else:
            raise DecodeError(
                f"unknown framing: first bytes {value[:2].hex()} are neither Confluent (00) "
                "nor Avro single-object (c301)",
                reason="unknown_framing",
            )
        reader = current_schemas().get(name)
        if reader is None:
            raise DecodeError(
                f"writer schema {name!r} is not an event streamer reads", reason="unknown_schema"
            )
        buf = io.BytesIO(value)
        buf.seek(offset)
        try:
            # The same parsed schema: no resolution (fastavro would compare them whole).
            record = schemaless_reader(
                buf, writer, None if writer is reader.parsed else reader.parsed
            )
        except Exception as exc:
            raise DecodeError(
                f"malformed Avro body for {name}: {type(exc).__name__}: {exc}",
                reason="malformed_avro",
            ) from exc
        if buf.tell() != len(value):
            raise DecodeError(
                f"{len(value) - buf.tell()} trailing bytes after the {name} record",
                reason="malformed_avro",
            )
        if not isinstance(record, dict):
            raise DecodeError(f"{name} did not decode to a record", reason="malformed_avro")
        return DecodedRecord(name, record, writer_id)

    def media_prefix(self, value: bytes) -> tuple[dict[str, Any], int] | None:
        """The fields before ``mode`` of a ``MediaGalleryChanged`` written with the current
        schema, and the offset where ``mode`` begins; None for any other message.

        Avro writes a record's fields one after another, so those fields are the first bytes
        of the body, read here as fastavro reads them (the same values as ``decode``), up to
        where the rest begins.
        """
        if value[:2] == SINGLE_OBJECT_MAGIC:
            if value[2:10] != _media_fingerprint():
                return None
            offset = 10
        elif value[:1] == bytes((CONFLUENT_MAGIC,)) and len(value) >= 5:
            (schema_id,) = _ID.unpack_from(value, 1)
            if not self._current_media(schema_id):
                return None
            offset = 5
        else:
            return None
        if not _prefix_readable():
            return None
        try:
            return _read_prefix(value, offset)
        except (ValueError, IndexError, OverflowError):
            return None  # decode() reads it again and names what is wrong

    def _current_media(self, schema_id: int) -> bool:
        known = self._media_ids.get(schema_id)
        if known is None:
            try:
                name, writer = self._registry_schema(schema_id)
            except (DecodeError, SchemaRegistryUnavailable):
                return False  # not kept: decode() raises what the registry said
            known = (
                name == EventType.MEDIA.value
                and to_parsing_canonical_form(writer) == _current_media_canonical()
            )
            self._media_ids[schema_id] = known
        return known

    def _source_event(self, value: bytes | None) -> DecodedRecord:
        decoded = self.decode(value)
        if decoded.type_name not in (EventType.PRODUCT.value, EventType.MEDIA.value):
            raise DecodeError(f"{decoded.type_name} is not a source event", reason="unknown_schema")
        return decoded

    def decode_event(self, value: bytes | None) -> ProductChanged | MediaGalleryChanged:
        """The validated model of a message (tools, tests)."""
        decoded = self._source_event(value)
        return parse_event(decoded.type_name, decoded.data)

    def decode_gallery_input(self, value: bytes | None) -> GalleryInput:
        """What the gallery job consumes: a source event, or a re-check of a gallery's objects."""
        decoded = self.decode(value)
        if decoded.type_name == RECHECK:
            return lean_recheck(decoded.data)
        if decoded.type_name not in (EventType.PRODUCT.value, EventType.MEDIA.value):
            raise DecodeError(f"{decoded.type_name} is not a source event", reason="unknown_schema")
        return lean_event(decoded.type_name, decoded.data)

    def decode_lean(self, value: bytes | None) -> LeanEvent:
        """The same event as ``decode_event``, as the consumer's hot path carries it."""
        decoded = self._source_event(value)
        return lean_event(decoded.type_name, decoded.data)
