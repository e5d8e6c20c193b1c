"""``/ui``: the operator console (filled in below)."""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["router"]

router = APIRouter(prefix="/ui", include_in_schema=False)
