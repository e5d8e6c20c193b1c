"""``/v1``: bulk intake and request tracking, as JSON over bearer tokens."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from streamer.api.access import require_full, require_read
from streamer.api.auth import Principal
from streamer.api.intake import Intake, IntakeReply, parse_json
from streamer.api.models import Acknowledgment, BulkList, BulkStatus, Problem
from streamer.runtime.database import Database
from streamer.tracking.store import latest_bulk_of_request, load_bulk, load_items, recent_bulks

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["intake and tracking"])

_INTAKE_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": Acknowledgment, "description": "every accepted item acknowledged by the broker"},
    400: {"model": Problem, "description": "the body is not JSON"},
    401: {"model": Problem, "description": "no valid bearer token"},
    403: {"model": Problem, "description": "a read-only token"},
    413: {"model": Problem, "description": "the body is over STREAMER_API_MAX_BODY_BYTES"},
    422: {"description": "malformed payload, too many items, or no item accepted"},
    503: {"description": "broker or database unavailable (Retry-After); names what went out"},
}


async def read_body(request: Request) -> bytes:
    """The body, refused with 413 as soon as it is over the limit (declared or streamed)."""
    limit = request.app.state.settings.api.api_max_body_bytes
    declared = request.headers.get("content-length")
    too_large = HTTPException(
        413, f"the body is over the limit of {limit} bytes (STREAMER_API_MAX_BODY_BYTES)"
    )
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _reply(reply: IntakeReply) -> JSONResponse:
    return JSONResponse(reply.body, status_code=reply.status_code, headers=reply.headers)


def _intake(request: Request) -> Intake:
    intake: Intake = request.app.state.intake
    return intake


@router.post(
    "/galleries/bulk",
    status_code=202,
    response_model=Acknowledgment,
    responses=_INTAKE_RESPONSES,
    summary="Take in a gallery bulk (the gallery connector's payload)",
)
async def galleries_bulk(
    request: Request, _: Annotated[Principal, Depends(require_full)]
) -> JSONResponse:
    """``{"request": {"request_id": "…", "items": [{"sku", "images": [...]}]}}``: validated,
    de-duplicated by SKU (last wins), published; 202 once the broker acknowledged every
    accepted item. Each item is acknowledged: accepted, rejected (with its reason) or
    superseded (a later item of the same SKU won)."""
    payload = parse_json(await read_body(request))
    return _reply(await _intake(request).bulk(payload))


@router.post(
    "/events",
    status_code=202,
    response_model=Acknowledgment,
    responses=_INTAKE_RESPONSES,
    summary="Take in JSON lines of events (ProductChanged, MediaGalleryChanged)",
)
async def events(
    request: Request,
    _: Annotated[Principal, Depends(require_full)],
    request_id: Annotated[
        str | None, Query(max_length=255, description="for events that carry none")
    ] = None,
) -> JSONResponse:
    """One event per line, each with a ``type``; as ``streamer publish`` takes them."""
    raw = await read_body(request)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPException(400, f"the body is not UTF-8 (byte {exc.start})") from exc
    if not text.strip():
        raise HTTPException(422, "the body has no events")
    return _reply(await _intake(request).events(text, request_id))


def _database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


@router.get("/bulks/{bulk_uuid}", response_model=BulkStatus, responses={404: {"model": Problem}})
async def bulk(
    request: Request,
    bulk_uuid: uuid.UUID,
    _: Annotated[Principal, Depends(require_read)],
    items: Annotated[bool, Query(description="include a page of items")] = False,
    after: Annotated[int, Query(ge=0, description="items after this id")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSONResponse:
    """Counts by outcome, ``complete`` and ``completed_at``; per-item state with ``?items=true``."""
    async with _database(request).acquire() as conn:
        found = await load_bulk(conn, str(bulk_uuid))
        if found is None:
            raise HTTPException(404, f"no bulk {bulk_uuid}")
        if items:
            page = await load_items(conn, str(bulk_uuid), after=after, limit=limit)
            found["items"] = page
            found["next_after"] = page[-1]["id"] if len(page) == limit else None
    return JSONResponse(BulkStatus.model_validate(found).model_dump(mode="json"))


@router.get("/bulks", response_model=BulkList)
async def bulks(
    request: Request,
    _: Annotated[Principal, Depends(require_read)],
    request_id: Annotated[str | None, Query(description="the bulks of one request_id")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JSONResponse:
    """The newest bulks, or every bulk submitted with ``request_id`` (newest first)."""
    async with _database(request).acquire() as conn:
        if request_id is None:
            found = await recent_bulks(conn, limit=limit)
        else:
            ids = await latest_bulk_of_request(conn, request_id)
            found = [b for i in ids[:limit] if (b := await load_bulk(conn, i)) is not None]
    return JSONResponse(BulkList.model_validate({"bulks": found}).model_dump(mode="json"))
