"""Every error answer of the API: ``{"reason", "detail"}``, a stable word and a human message.

One place turns what a route raises (our ``ApiError``, FastAPI's validation errors,
Starlette's 404/405, a streamer error, anything unexpected) into that shape, so no
answer ever carries an internal exception's text: a database error's message names
the server's internals and, at worst, the data of another request. Unexpected errors
are logged with a reference that the answer repeats, so an operator can find them.
The console (``/ui/``) gets the same answers as a page instead of JSON.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from streamer.api.auth import Principal
from streamer.contract.errors import InvalidEvent, SchemaRejected
from streamer.errors import StreamerError

__all__ = ["RETRY_AFTER_S", "ApiError", "install", "problem"]

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5

# The reason of an HTTP status when nothing more precise was said.
_REASONS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "unavailable",
}


class ApiError(Exception):
    """An answer a route gives on purpose: status, reason, message, maybe headers."""

    def __init__(
        self,
        status_code: int,
        reason: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.reason = reason
        self.detail = detail
        self.headers = dict(headers or {})


def problem(
    status_code: int, reason: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"reason": reason, "detail": detail}, status_code=status_code, headers=dict(headers or {})
    )


def _where(loc: Sequence[Any]) -> str:
    """FastAPI's error location as a person reads it: "query parameter `limit`"."""
    parts = [str(p) for p in loc]
    if not parts:
        return "the request"
    kind, rest = parts[0], parts[1:]
    name = ".".join(rest)
    if kind == "body":
        return f"body field `{name}`" if name else "the body"
    if kind in ("query", "path", "header", "cookie"):
        return f"{kind} parameter `{name}`"
    return f"`{'.'.join(parts)}`"


def validation_detail(errors: Sequence[Mapping[str, Any]]) -> str:
    """Pydantic's messages with where they apply; never the input value (it may be huge, or
    carry bytes a log or terminal should not print)."""
    shown = [f"{_where(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(shown) + more


def _is_console(request: Request) -> bool:
    return request.url.path.startswith("/ui")


def _viewer(request: Request) -> Principal | None:
    """Who looks at a console error page (for its navigation), if anyone logged in."""
    from streamer.api.access import bearer, console_session  # access raises ApiError

    principal = bearer(request)
    if principal is not None:
        return principal
    session = console_session(request)
    return session.principal if session is not None else None


def _answer(
    request: Request,
    status_code: int,
    reason: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
) -> Response:
    if _is_console(request):
        templates = request.app.state.templates
        response: HTMLResponse = templates.TemplateResponse(
            request,
            "error.html",
            {
                "status_code": status_code,
                "reason": reason,
                "detail": detail,
                "principal": _viewer(request),
                "csrf": "",
            },
            status_code=status_code,
            headers=dict(headers or {}),
        )
        return response
    return problem(status_code, reason, detail, headers)


def install(app: FastAPI) -> None:
    """Register the handlers that give every error its ``{"reason", "detail"}``."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return _answer(request, exc.status_code, exc.reason, exc.detail, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else "the request was refused"
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"nothing is served at {request.url.path}"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            detail = f"{request.method} is not allowed on {request.url.path}" + (
                f" (allowed: {allowed})" if allowed else ""
            )
        reason = _REASONS.get(exc.status_code, "error")
        return _answer(request, exc.status_code, reason, detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        return _answer(request, 422, "invalid_request", validation_detail(exc.errors()))

    @app.exception_handler(InvalidEvent)
    async def invalid_event(request: Request, exc: InvalidEvent) -> Response:
        status = 400 if exc.reason == "malformed_json" else 422
        return _answer(request, status, exc.reason, exc.message)

    @app.exception_handler(StreamerError)
    async def streamer_error(request: Request, exc: StreamerError) -> Response:
        if exc.retriable:
            # Which dependency is down is worth saying; its driver's text is not.
            log.warning("request to %s: %s", request.url.path, exc)
            return _answer(
                request,
                503,
                "unavailable",
                _unavailable_detail(exc),
                {"Retry-After": str(RETRY_AFTER_S)},
            )
        if isinstance(exc, SchemaRejected):
            # A configuration a client cannot fix but must hear of: the registry refuses this
            # deployment's schema. Its message is ours, naming the schema, subject and rule.
            log.error("request to %s: %s", request.url.path, exc)
            return _answer(request, 500, exc.reason, f"{exc.message}; nothing was published")
        return _internal(request, exc)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        return _internal(request, exc)


def _unavailable_detail(exc: StreamerError) -> str:
    name = type(exc).__name__
    if "Database" in name:
        what = "PostgreSQL is unavailable"
    elif "Broker" in name or "Delivery" in name:
        what = "Kafka is unavailable"
    else:
        what = "a dependency is unavailable"
    return f"{what}; nothing was changed, try again in {RETRY_AFTER_S} s"


def _internal(request: Request, exc: BaseException) -> Response:
    ref = uuid.uuid4().hex[:12]
    log.error(
        "request to %s failed (ref %s): %s: %s",
        request.url.path,
        ref,
        type(exc).__name__,
        exc,
        exc_info=not isinstance(exc, StreamerError),
    )
    return _answer(
        request,
        500,
        "internal_error",
        f"the server could not complete this request; the error is logged under ref {ref}",
    )
