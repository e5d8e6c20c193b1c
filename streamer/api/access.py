"""Authentication and authorisation as FastAPI dependencies, over ``auth.TokenBook``."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from streamer.api.auth import Principal, Session, TokenBook
from streamer.api.problems import ApiError

__all__ = ["SESSION_COOKIE", "bearer", "console_session", "require_full", "require_read"]

SESSION_COOKIE = "streamer_session"

# Declared so that the OpenAPI document says how to authenticate; checked below.
_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="a token of STREAMER_API_TOKENS (full access) or STREAMER_API_READ_TOKENS "
    "(read-only)",
)


def _book(request: Request) -> TokenBook:
    book: TokenBook = request.app.state.tokens
    return book


def bearer(request: Request) -> Principal | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return _book(request).check(token.strip())


def console_session(request: Request) -> Session | None:
    return _book(request).session(request.cookies.get(SESSION_COOKIE), now_s=int(time.time()))


def _unauthorized(request: Request) -> ApiError:
    given = "authorization" in request.headers
    return ApiError(
        401,
        "invalid_token" if given else "missing_token",
        "invalid bearer token" if given else "missing bearer token (Authorization: Bearer …)",
        headers={"WWW-Authenticate": 'Bearer realm="streamer"'},
    )


async def require_read(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(_scheme)] = None,
) -> Principal:
    """Any valid token. The JSON API takes bearer tokens only: a console cookie is not
    enough to call it, so a page elsewhere cannot make a logged-in browser call it.

    ``async`` (it never blocks) so that FastAPI calls it on the loop: a plain ``def``
    dependency is run in a worker thread, a thread hop per dependency per request."""
    principal = bearer(request)
    if principal is None:
        raise _unauthorized(request)
    return principal


async def require_full(principal: Annotated[Principal, Depends(require_read)]) -> Principal:
    if not principal.can_write:
        raise ApiError(
            403, "read_only_token", "this token may only read (STREAMER_API_READ_TOKENS)"
        )
    return principal
