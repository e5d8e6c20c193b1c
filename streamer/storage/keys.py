"""How a gallery's file path maps to an object key: the configured prefix joined with the path."""

from __future__ import annotations

__all__ = ["s3_key"]


def s3_key(prefix: str, file_path: str) -> str:
    """The object key of a normalised file path (``/a/b.jpg``) under the configured prefix."""
    prefix = prefix.strip("/")
    return f"{prefix}{file_path}" if prefix else file_path.lstrip("/")
