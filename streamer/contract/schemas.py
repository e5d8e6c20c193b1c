"""The Avro schemas of ``schemas/``, loaded and parsed once; they are the single source of truth.

Installed wheels carry them as ``streamer/_schemas`` (hatch force-include);
editable installs read the repository's ``schemas/`` folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

__all__ = ["KnownSchema", "current_schemas", "known_schemas", "schema_dir"]

NAMESPACE = "io.streamer.catalog"
EVENT_TYPES = (
    "ProductChanged",
    "MediaGalleryChanged",
    "GalleryUpdated",
    "ImportCompleted",
    "GalleryRecheck",
)


@dataclass(frozen=True)
class KnownSchema:
    name: str  # short record name, e.g. ProductChanged
    version: str  # "current" or the history file's version, e.g. "v1"
    raw: dict[str, Any]
    parsed: Any
    canonical: str
    fingerprint: bytes  # CRC-64-AVRO, 8 bytes little-endian as in single-object encoding


@cache
def schema_dir() -> Path:
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_schemas", package.parent / "schemas"):
        if (candidate / "ProductChanged.avsc").exists():
            return candidate
    raise FileNotFoundError(f"no Avro schemas found next to {package}")


def _load(path: Path, version: str) -> KnownSchema:
    raw = json.loads(path.read_text())
    parsed = parse_schema(raw)
    canonical = to_parsing_canonical_form(parsed)
    digest = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
    return KnownSchema(raw["name"], version, raw, parsed, canonical, digest)


@cache
def current_schemas() -> dict[str, KnownSchema]:
    """Reader schemas by short name."""
    return {name: _load(schema_dir() / f"{name}.avsc", "current") for name in EVENT_TYPES}


@cache
def known_schemas() -> dict[bytes, KnownSchema]:
    """Every schema a writer may have used (current and history), by fingerprint."""
    known = {s.fingerprint: s for s in current_schemas().values()}
    for path in sorted((schema_dir() / "history").glob("*.avsc")):
        version = path.stem.rsplit(".", 1)[-1]
        schema = _load(path, version)
        known.setdefault(schema.fingerprint, schema)
    return known
