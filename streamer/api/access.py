"""Authentication and authorisation as FastAPI dependencies, over ``auth.TokenBook``."""

from __future__ import annotations

import time

from fastapi import HTTPException, Request

from streamer.api.auth import Principal, Session, TokenBook

__all__ = ["SESSION_COOKIE", "bearer", "console_session", "require_full", "require_read"]

SESSION_COOKIE = "streamer_session"


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


def _unauthorized(request: Request) -> HTTPException:
    given = "authorization" in request.headers
    return HTTPException(
        401,
        "invalid bearer token" if given else "missing bearer token (Authorization: Bearer …)",
        headers={"WWW-Authenticate": 'Bearer realm="streamer"'},
    )


def require_read(request: Request) -> Principal:
    """Any valid token. The JSON API takes bearer tokens only: a console cookie is not
    enough to call it, so a page elsewhere cannot make a logged-in browser call it."""
    principal = bearer(request)
    if principal is None:
        raise _unauthorized(request)
    return principal


def require_full(request: Request) -> Principal:
    principal = require_read(request)
    if not principal.can_write:
        raise HTTPException(403, "this token may only read (STREAMER_API_READ_TOKENS)")
    return principal
