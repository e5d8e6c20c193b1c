"""``/v1``: bulk intake and request tracking, as JSON over bearer tokens.

The OpenAPI document is the contract, and schemathesis holds the server to it in the
test suite: request bodies are described as the server reads them (the shape of the
request, not each item's rules: items are judged one by one and the answer names
each one's fate), and every status a route can answer is listed with its body.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse

from streamer.api import idempotency
from streamer.api.access import require_full, require_read
from streamer.api.auth import Principal
from streamer.api.intake import Intake, IntakeReply, parse_json
from streamer.api.models import Acknowledgment, BulkList, BulkStatus, Completion, Problem
from streamer.api.problems import RETRY_AFTER_S, ApiError
from streamer.api.waiters import CompletionWaiters, TooManyWaiters
from streamer.contract.ingest import valid_request_id
from streamer.runtime.database import Database
from streamer.tracking.store import latest_bulk_of_request, load_bulk, load_items, recent_bulks

__all__ = ["bulk_body_schema", "router"]

router = APIRouter(prefix="/v1", tags=["intake and tracking"])

JSON_TYPES = ("application/json",)
JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "text/plain")
_CONTROL = "[\\x00-\\x1f\\x7f]"
_PREFER_WAIT = re.compile(r"^\s*wait\s*=\s*\"?(\d{1,9})\"?\s*$", re.IGNORECASE)


def _problem(description: str, **extra: Any) -> dict[str, Any]:
    return {"model": Problem, "description": description, **extra}


_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before trying again",
        "schema": {"type": "integer"},
    }
}
_TRACKING_LINK = {
    "GetBulk": {
        "operationId": "bulk",
        "parameters": {"bulk_uuid": "$response.body#/bulk_uuid"},
        "description": "follow the bulk: counts by outcome, complete, completed_at, its items",
    }
}
_WAITED = {
    "Preference-Applied": {
        "description": "`wait=N` when the request carried `Prefer: wait`: how long the server "
        "was willing to wait (N is capped by STREAMER_API_MAX_WAIT_S)",
        "schema": {"type": "string"},
    }
}
_INTAKE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": Completion,
        "description": "with `Prefer: wait=N`: the bulk completed within N seconds; every "
        "item's final outcome",
        "headers": _WAITED,
        "links": _TRACKING_LINK,
    },
    202: {
        "model": Acknowledgment,
        "description": "every accepted item acknowledged by the broker (items rejected are "
        "listed with their reason; when none is accepted, bulk_uuid is null and nothing was "
        "published). With `Prefer: wait=N`: the bulk did not complete within N seconds",
        "headers": {
            "Location": {
                "description": "the bulk's tracking URL, when an item was accepted",
                "schema": {"type": "string"},
            },
            **_WAITED,
        },
        "links": _TRACKING_LINK,
    },
    400: _problem("the body is not JSON (the detail gives line and column) or not UTF-8"),
    401: _problem("no valid bearer token"),
    403: _problem("a read-only token"),
    409: _problem(
        "a request with the same Idempotency-Key is still being taken in", headers=_RETRY_AFTER
    ),
    413: _problem("the body is over STREAMER_API_MAX_BODY_BYTES"),
    415: _problem("a Content-Type this route does not read"),
    422: _problem(
        "a malformed request (not the documented shape), more than STREAMER_API_MAX_ITEMS "
        "items, an invalid header or parameter, or an Idempotency-Key reused for another request"
    ),
    500: _problem(
        "`schema_rejected`: the Schema Registry refuses this deployment's event schema (the "
        "detail names the subject and the rule); nothing was published"
    ),
    503: {
        "description": "Kafka or PostgreSQL unavailable before anything was sent (a problem: "
        "nothing was published), too many requests waiting (`Prefer: wait`), or some items "
        "not acknowledged: those are `undeliverable`, the others are published and tracked, "
        "and the answer (an acknowledgment) says which; sending an item again is safe",
        "headers": _RETRY_AFTER,
        "content": {
            "application/json": {
                "schema": {
                    "anyOf": [
                        {"$ref": "#/components/schemas/Problem"},
                        {"$ref": "#/components/schemas/Acknowledgment"},
                    ]
                }
            }
        },
    },
}
_READ_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _problem("no valid bearer token"),
    422: _problem("an invalid parameter"),
    503: _problem("PostgreSQL unavailable", headers=_RETRY_AFTER),
}


def _request_id_schema(description: str) -> dict[str, Any]:
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "not": {"type": "string", "pattern": _CONTROL},
        "description": description,
    }


def bulk_body_schema(max_items: int) -> dict[str, Any]:
    """The gallery connector's payload, as far as the server reads it as a whole."""
    image = {
        "type": "object",
        "required": ["file_path"],
        "properties": {
            "file_path": {
                "type": "string",
                "description": "relative to STREAMER_S3_PREFIX; one leading slash is added",
            },
            "label": {"type": "string"},
            "position": {"type": "integer", "minimum": 0},
            "disabled": {"type": "boolean"},
            "roles": {"type": "array", "items": {"type": "string"}},
            "etag": {"type": "string", "description": "the producer's ETag (checked)"},
        },
    }
    item = {
        "title": "GalleryItem",
        "type": "object",
        "required": ["sku", "images"],
        "properties": {
            "sku": {"type": "string", "minLength": 1, "maxLength": 64},
            "mode": {"type": "string", "enum": ["UPSERT", "REPLACE"], "default": "UPSERT"},
            "version": {"type": "integer", "description": "defaults to the time taken in, ms"},
            "images": {"type": "array", "minItems": 1, "maxItems": 1000, "items": image},
        },
    }
    return {
        "type": "object",
        "required": ["request"],
        "properties": {
            "request": {
                "type": "object",
                "required": ["items"],
                "properties": {
                    "request_id": {
                        **_request_id_schema(
                            "your id for this import (correlation; `GET /v1/bulks?request_id=`); "
                            "null or absent: one is made up"
                        ),
                        "type": ["string", "null"],
                    },
                    "items": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": max_items,
                        "description": "each item is judged on its own: a GalleryItem is "
                        "accepted, anything else is rejected with its reason in "
                        "`request_items`, and the others still go out",
                        "items": {
                            "anyOf": [
                                item,
                                {"description": "anything else: rejected on its own"},
                            ]
                        },
                    },
                },
            }
        },
        "example": {
            "request": {
                "request_id": "op-12345",
                "items": [
                    {
                        "sku": "SKU-001",
                        "images": [{"file_path": "a/b.jpg", "label": "front", "roles": ["base"]}],
                    }
                ],
            }
        },
    }


EVENTS_BODY = {
    "type": "string",
    "minLength": 1,
    "pattern": "\\S",
    "description": "JSON lines: one event per line, each an object with a `type` "
    "(`MediaGalleryChanged` or `media`, `ProductChanged` or `product`) and the event's "
    "fields (`sku`, and `images` for media, `name`/`enabled`/`op` for products); "
    "`event_id`, `version`, `occurred_at` and `source` are filled in when missing. Each "
    "line is judged on its own, as an item.",
    "example": '{"type": "media", "sku": "SKU-001", "images": [{"file_path": "a/b.jpg", '
    '"roles": ["base"]}]}\n{"type": "product", "sku": "SKU-001", "name": "Blue mug"}\n',
}

_PREFER_DOC = (
    "RFC 7240. `wait=N`: answer 200 with every item's final outcome when the bulk completes "
    "within N seconds (capped by STREAMER_API_MAX_WAIT_S), else 202 as without it. Other "
    "preferences are ignored."
)
_IDEMPOTENCY_DOC = (
    "1-255 printable ASCII characters. A retry with the same key and the same request gets "
    "the first answer and publishes nothing again; the same key with another request is "
    "refused with 422."
)


async def read_body(request: Request) -> bytes:
    """The body, refused with 413 as soon as it is over the limit (declared or streamed)."""
    limit = request.app.state.settings.api.api_max_body_bytes
    declared = request.headers.get("content-length")
    too_large = ApiError(
        413,
        "too_large",
        f"the body is over the limit of {limit} bytes (STREAMER_API_MAX_BODY_BYTES)",
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


def _media_type(request: Request, accepted: tuple[str, ...]) -> None:
    """No Content-Type is read as the route's own; another one is refused with 415."""
    given = request.headers.get("content-type")
    if given is None:
        return
    media = given.split(";", 1)[0].strip().lower()
    if media in accepted or (accepted == JSON_TYPES and media.endswith("+json")):
        return
    raise ApiError(
        415,
        "unsupported_media_type",
        f"this route reads {', '.join(accepted)}, not {media or 'an empty Content-Type'}",
    )


def prefer_wait(value: str | None) -> int | None:
    """The ``wait`` preference of a ``Prefer`` header (RFC 7240), or None."""
    for preference in (value or "").split(","):
        found = _PREFER_WAIT.match(preference.split(";", 1)[0])
        if found:
            return int(found.group(1))
    return None


def _intake(request: Request) -> Intake:
    intake: Intake = request.app.state.intake
    return intake


def _database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def _waiters(request: Request) -> CompletionWaiters:
    waiters: CompletionWaiters = request.app.state.waiters
    return waiters


async def _completion(request: Request, reply: IntakeReply) -> dict[str, Any]:
    """The 200 body: the acknowledgment with every accepted item's outcome."""
    bulk_uuid = reply.bulk_uuid
    items = list(reply.body["request_items"])
    counts = dict.fromkeys(
        ("pending", "written", "noop", "partial", "dead_lettered", "stale", "duplicate"), 0
    )
    completed_at = None
    outcomes: dict[int, dict[str, Any]] = {}
    if bulk_uuid is not None:
        async with _database(request).acquire() as conn:
            bulk = await load_bulk(conn, bulk_uuid)
            rows = await load_items(conn, bulk_uuid, after=0, limit=None)
        if bulk is not None:
            counts, completed_at = bulk["counts"], bulk["completed_at"]
        outcomes = {r["id"]: r for r in rows}
    final = []
    for item in items:
        row = outcomes.get(item["id"], {})
        final.append(
            {**item, "outcome": row.get("outcome"), "outcome_reason": row.get("outcome_reason")}
        )
    failed = any(i["outcome"] in ("partial", "dead_lettered") for i in final)
    body = {
        "bulk_uuid": bulk_uuid,
        "request_id": reply.body["request_id"],
        "complete": True,
        "completed_at": completed_at,
        "counts": counts,
        "request_items": final,
        "errors": bool(reply.body["errors"]) or failed,
        "detail": ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "nothing accepted",
    }
    return Completion.model_validate(body).model_dump(mode="json")


async def _take(
    request: Request,
    principal: Principal,
    route: str,
    take: Callable[[bytes], Awaitable[IntakeReply]],
    accepted_types: tuple[str, ...],
    prefer: str | None,
    idempotency_key: str | None,
) -> JSONResponse:
    """What both intake routes share: the body, idempotency, the intake, and the wait."""
    started = time.monotonic()
    settings = request.app.state.settings.api
    asked = prefer_wait(prefer)
    wait_s = min(asked, settings.api_max_wait_s) if asked is not None else None
    _media_type(request, accepted_types)
    raw = await read_body(request)
    reservation: AbstractAsyncContextManager[None] = (
        _waiters(request).reserve() if wait_s else nullcontext()
    )
    try:
        async with reservation:
            reply, replayed = await _taken(request, principal, route, raw, take, idempotency_key)
            headers = dict(reply.headers)
            if replayed:
                headers["Idempotent-Replayed"] = "true"
            if reply.status_code != 202:
                return JSONResponse(reply.body, status_code=reply.status_code, headers=headers)
            if wait_s is not None:
                headers["Preference-Applied"] = f"wait={wait_s}"
            bulk_uuid = reply.bulk_uuid
            left = (wait_s or 0) - (time.monotonic() - started)
            if wait_s and (
                bulk_uuid is None or await _waiters(request).wait(bulk_uuid, timeout_s=left)
            ):
                return JSONResponse(await _completion(request, reply), headers=headers)
            if bulk_uuid is not None:
                headers["Location"] = f"/v1/bulks/{bulk_uuid}"
            return JSONResponse(reply.body, status_code=202, headers=headers)
    except TooManyWaiters:
        raise ApiError(
            503,
            "too_many_waiters",
            f"{settings.api_max_waiters} requests are already waiting (STREAMER_API_MAX_WAITERS); "
            "nothing was published: retry later, or without Prefer: wait",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ) from None


async def _taken(
    request: Request,
    principal: Principal,
    route: str,
    raw: bytes,
    take: Callable[[bytes], Awaitable[IntakeReply]],
    key: str | None,
) -> tuple[IntakeReply, bool]:
    """The intake's answer, or the kept answer of the first request with the same key."""
    if key is None:
        return await take(raw), False
    database = _database(request)
    claimed = await idempotency.claim(
        database,
        principal=principal.ref,
        route=route,
        key=key.strip('"'),
        print_=idempotency.fingerprint(route, request.url.query, raw),
    )
    if claimed.answer is not None:
        return IntakeReply(claimed.status_code or 202, claimed.answer), True
    try:
        reply = await take(raw)
    except BaseException:
        await idempotency.forget(database, claimed)
        raise
    if reply.status_code == 202:
        await idempotency.remember(database, claimed, reply.status_code, reply.body)
    else:
        await idempotency.forget(database, claimed)
    return reply, False


def _request_id_query(description: str) -> Any:
    """A ``request_id`` query parameter: 1-255 characters, no control character (checked
    again by ``_check_request_id``: the OpenAPI ``not`` is not something FastAPI checks)."""
    return Query(
        min_length=1,
        max_length=255,
        description=f"{description}; 1-255 characters, no control character",
        json_schema_extra={"not": {"type": "string", "pattern": _CONTROL}},
    )


PreferHeader = Annotated[str | None, Header(alias="Prefer", description=_PREFER_DOC)]
IdempotencyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=idempotency.IDEMPOTENCY_KEY_PATTERN,
        description=_IDEMPOTENCY_DOC,
    ),
]


@router.post(
    "/galleries/bulk",
    status_code=202,
    response_model=Acknowledgment,
    responses=_INTAKE_RESPONSES,
    summary="Take in a gallery bulk (the gallery connector's payload)",
    operation_id="galleries_bulk",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/BulkRequest"}}
            },
        }
    },
)
async def galleries_bulk(
    request: Request,
    principal: Annotated[Principal, Depends(require_full)],
    prefer: PreferHeader = None,
    idempotency_key: IdempotencyHeader = None,
) -> JSONResponse:
    """``{"request": {"request_id": "…", "items": [{"sku", "images": [...]}]}}``: validated,
    de-duplicated by SKU (last wins), published; 202 once the broker acknowledged every
    accepted item. Each item is acknowledged: accepted, rejected (with its reason) or
    superseded (a later item of the same SKU won)."""

    async def take(raw: bytes) -> IntakeReply:
        return await _intake(request).bulk(parse_json(raw))

    return await _take(
        request, principal, "galleries_bulk", take, JSON_TYPES, prefer, idempotency_key
    )


@router.post(
    "/events",
    status_code=202,
    response_model=Acknowledgment,
    responses=_INTAKE_RESPONSES,
    summary="Take in JSON lines of events (ProductChanged, MediaGalleryChanged)",
    operation_id="events",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {media: {"schema": EVENTS_BODY} for media in JSONL_TYPES},
        }
    },
)
async def events(
    request: Request,
    principal: Annotated[Principal, Depends(require_full)],
    request_id: Annotated[str | None, _request_id_query("for events that carry none")] = None,
    prefer: PreferHeader = None,
    idempotency_key: IdempotencyHeader = None,
) -> JSONResponse:
    """One event per line, each with a ``type``; as ``streamer publish`` takes them."""
    _check_request_id(request_id)

    async def take(raw: bytes) -> IntakeReply:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ApiError(
                400, "malformed_json", f"the body is not UTF-8 (byte {exc.start})"
            ) from exc
        if not text.strip():
            raise ApiError(422, "empty_body", "the body has no events: send one JSON object a line")
        return await _intake(request).events(text, request_id)

    return await _take(request, principal, "events", take, JSONL_TYPES, prefer, idempotency_key)


def _check_request_id(request_id: str | None) -> None:
    if request_id is not None and not valid_request_id(request_id):
        raise ApiError(
            422,
            "invalid_request_id",
            "query parameter `request_id`: 1-255 characters without control characters",
        )


@router.get(
    "/bulks/{bulk_uuid}",
    response_model=BulkStatus,
    responses={404: _problem("no such bulk"), **_READ_RESPONSES},
    operation_id="bulk",
    summary="A bulk's progress: counts by outcome, complete, and its items",
)
async def bulk(
    request: Request,
    bulk_uuid: uuid.UUID,
    _: Annotated[Principal, Depends(require_read)],
    items: Annotated[bool, Query(description="include a page of items")] = False,
    after: Annotated[int, Query(ge=0, le=2**31 - 1, description="items after this id")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSONResponse:
    """Counts by outcome, ``complete`` and ``completed_at``; per-item state with ``?items=true``."""
    async with _database(request).acquire() as conn:
        found = await load_bulk(conn, str(bulk_uuid))
        if found is None:
            raise ApiError(404, "unknown_bulk", f"no bulk {bulk_uuid}")
        if items:
            page = await load_items(conn, str(bulk_uuid), after=after, limit=limit)
            found["items"] = page
            found["next_after"] = page[-1]["id"] if len(page) == limit else None
    return JSONResponse(BulkStatus.model_validate(found).model_dump(mode="json"))


@router.get(
    "/bulks",
    response_model=BulkList,
    responses=_READ_RESPONSES,
    operation_id="bulks",
    summary="The newest bulks, or those of one request_id",
)
async def bulks(
    request: Request,
    _: Annotated[Principal, Depends(require_read)],
    request_id: Annotated[str | None, _request_id_query("the bulks of one request_id")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JSONResponse:
    """The newest bulks, or every bulk submitted with ``request_id`` (newest first)."""
    _check_request_id(request_id)
    async with _database(request).acquire() as conn:
        if request_id is None:
            found = await recent_bulks(conn, limit=limit)
        else:
            ids = await latest_bulk_of_request(conn, request_id)
            found = [b for i in ids[:limit] if (b := await load_bulk(conn, i)) is not None]
    return JSONResponse(BulkList.model_validate({"bulks": found}).model_dump(mode="json"))
