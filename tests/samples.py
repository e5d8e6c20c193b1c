"""Wire-level samples that unit and integration tests both feed to the consumer."""

from __future__ import annotations

import io

from fastavro import parse_schema, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from streamer.contract.codec import SINGLE_OBJECT_MAGIC


def unknown_schema_message(x: int = 1) -> bytes:
    """A well-formed single-object Avro message of a schema streamer has never seen."""
    other = parse_schema(
        {"type": "record", "name": "Other", "fields": [{"name": "x", "type": "int"}]}
    )
    buf = io.BytesIO()
    buf.write(
        SINGLE_OBJECT_MAGIC
        + bytes.fromhex(fingerprint(to_parsing_canonical_form(other), "CRC-64-AVRO"))
    )
    schemaless_writer(buf, other, {"x": x})
    return buf.getvalue()
