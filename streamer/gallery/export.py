"""Reading gallery state back out: one SKU for people, every SKU as JSON lines for machines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from streamer.runtime.database import connect

__all__ = ["export_galleries", "load_gallery"]

_PRODUCTS = """
SELECT sku, product_version, gallery_version, deleted, name, enabled, row_version, updated_at,
       product_event_id::text AS product_event_id, gallery_event_id::text AS gallery_event_id
FROM products {where} ORDER BY sku
"""
_IMAGES = """
SELECT sku, file_path, etag, size_bytes, content_type, label, position, disabled, roles,
       content_version, row_version, updated_at
FROM gallery_images WHERE sku = ANY($1::text[])
ORDER BY sku, position NULLS LAST, file_path
"""


def _gallery(product: Any, images: list[Any], *, detail: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "sku": product["sku"],
        "version": max(product["product_version"], product["gallery_version"]),
        "deleted": product["deleted"],
        "name": product["name"],
        "enabled": product["enabled"],
        "images": [
            {
                "file_path": i["file_path"],
                "etag": i["etag"],
                "label": i["label"],
                "position": i["position"],
                "disabled": i["disabled"],
                "roles": sorted(i["roles"]),
            }
            | (
                {
                    "size_bytes": i["size_bytes"],
                    "content_type": i["content_type"],
                    "content_version": i["content_version"],
                    "row_version": i["row_version"],
                    "updated_at": i["updated_at"].isoformat(),
                }
                if detail
                else {}
            )
            for i in images
        ],
    }
    if detail:
        out |= {
            "product_version": product["product_version"],
            "product_event_id": product["product_event_id"],
            "gallery_version": product["gallery_version"],
            "gallery_event_id": product["gallery_event_id"],
            "row_version": product["row_version"],
            "updated_at": product["updated_at"].isoformat(),
        }
    return out


async def load_gallery(dsn: str, sku: str) -> dict[str, Any] | None:
    async with connect(dsn) as conn:
        product = await conn.fetchrow(_PRODUCTS.format(where="WHERE sku = $1"), sku)
        if product is None:
            return None
        images = await conn.fetch(_IMAGES, [sku])
    return _gallery(product, list(images), detail=True)


async def export_galleries(dsn: str, *, chunk: int = 1000) -> AsyncIterator[dict[str, Any]]:
    """Every SKU in order, images sorted by position then file_path (the export contract)."""
    async with connect(dsn) as conn:
        last = ""
        while True:
            products = await conn.fetch(
                _PRODUCTS.format(where="WHERE sku > $1") + " LIMIT $2", last, chunk
            )
            if not products:
                return
            rows = await conn.fetch(_IMAGES, [p["sku"] for p in products])
            by_sku: dict[str, list[Any]] = {}
            for row in rows:
                by_sku.setdefault(row["sku"], []).append(row)
            for product in products:
                yield _gallery(product, by_sku.get(product["sku"], []), detail=False)
            last = products[-1]["sku"]
