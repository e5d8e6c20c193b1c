"""``/ui``: the operator console, server-rendered, no build step.

Pages read what the CLI reads, through the same functions: bulks through
``streamer.tracking.store``, dead letters through ``streamer.runtime.replay``
(``read_dead_letters``, ``DeadLetterFilter``, ``replay_dead_letters``) and
``streamer.ops.deadletters`` (the view ``streamer dlq show`` prints), galleries
through the reader the CLI hands in. A browser logs in with a token once and gets
an HttpOnly session cookie (``auth``); every form that changes something carries a
CSRF token, and a replay is shown as a dry run before it can be confirmed.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections import Counter
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup

from streamer.api.access import SESSION_COOKIE, bearer, console_session
from streamer.api.auth import Principal, Session, TokenBook
from streamer.api.charts import line_chart
from streamer.api.problems import ApiError
from streamer.api.sampling import JobSampler
from streamer.errors import StreamerError
from streamer.ops.deadletters import dead_letter_view, replayed_marks
from streamer.ops.jobs import JobView, describe_jobs
from streamer.runtime.deadletters import DeadLetterRecord
from streamer.runtime.replay import DeadLetterFilter, read_dead_letters, replay_dead_letters
from streamer.storage.keys import s3_key
from streamer.tracking.store import load_bulk, load_items, recent_bulks

__all__ = ["router"]

router = APIRouter(prefix="/ui", include_in_schema=False)

LOGIN_COOKIE = "streamer_login"
_SHOWN_LETTERS = 200
# What a browser can show as a thumbnail; other objects (a PDF, a video) get no <img>, and
# an image whose bytes are not one (a failed upload) is replaced by the page when it fails.
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".avif", ".svg", ".bmp", ".ico")


class _LoginRequired(Exception):
    pass


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _viewer(request: Request) -> tuple[Principal, Session | None]:
    """Who looks at the page: a logged-in browser, or a client with a bearer token."""
    principal = bearer(request)
    if principal is not None:
        return principal, None
    session = console_session(request)
    if session is None:
        raise _LoginRequired
    return session.principal, session


def _login_first(request: Request) -> Response | None:
    """The login page for a browser that is not logged in, before anything is looked up."""
    try:
        _viewer(request)
    except _LoginRequired:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/login?next={quote(target)}", status_code=303)
    return None


def _page(request: Request, template: str, **context: Any) -> HTMLResponse:
    try:
        principal, session = _viewer(request)
    except _LoginRequired:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/login?next={quote(target)}", status_code=303)  # type: ignore[return-value]
    book: TokenBook = request.app.state.tokens
    context.update(
        principal=principal,
        csrf=book.csrf_token(session) if session is not None else "",
        request=request,
    )
    response: HTMLResponse = request.app.state.templates.TemplateResponse(
        request, template, context
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    return response


def _writer(request: Request, csrf: str | None) -> None:
    """A console action: a full token, and the session's CSRF token when a cookie vouches."""
    try:
        principal, session = _viewer(request)
    except _LoginRequired as exc:
        raise HTTPException(401, "log in first") from exc
    if not principal.can_write:
        raise HTTPException(403, "this token may only read (STREAMER_API_READ_TOKENS)")
    book: TokenBook = request.app.state.tokens
    if session is not None and not book.csrf_ok(session, csrf):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")


# -- login ---------------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = "/ui/", error: str | None = None) -> Response:
    nonce = secrets.token_urlsafe(16)
    response = request.app.state.templates.TemplateResponse(
        request,
        "login.html",
        {"next": _local(next), "nonce": nonce, "error": error, "principal": None, "csrf": ""},
    )
    response.set_cookie(
        LOGIN_COOKIE, nonce, httponly=True, samesite="strict", secure=_secure(request), max_age=600
    )
    return response  # type: ignore[no-any-return]


def _local(target: str) -> str:
    """Only paths of the console: never an open redirect."""
    return target if target.startswith("/ui/") and not target.startswith("//") else "/ui/"


@router.post("/login")
async def login(
    request: Request,
    token: Annotated[str, Form()],
    nonce: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/ui/",
) -> Response:
    cookie = request.cookies.get(LOGIN_COOKIE) or ""
    if not cookie or not secrets.compare_digest(cookie, nonce):
        raise HTTPException(403, "the login form expired: reload it")
    book: TokenBook = request.app.state.tokens
    principal = book.check(token.strip())
    if principal is None:
        query = urlencode({"next": _local(next), "error": "That token is not valid."})
        return RedirectResponse(f"/ui/login?{query}", status_code=303)
    ttl_s = request.app.state.settings.api.api_session_ttl_s
    response = RedirectResponse(_local(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        book.new_session(principal, now_s=int(time.time()), ttl_s=ttl_s),
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        max_age=ttl_s,
        path="/ui",
    )
    response.delete_cookie(LOGIN_COOKIE)
    return response


@router.post("/logout")
async def logout(request: Request, csrf: Annotated[str | None, Form()] = None) -> Response:
    session = console_session(request)
    book: TokenBook = request.app.state.tokens
    if session is not None and not book.csrf_ok(session, csrf):
        raise HTTPException(403, "missing or wrong CSRF token")
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/ui")
    return response


# -- imports ---------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
async def imports(request: Request) -> Response:
    async with request.app.state.database.acquire() as conn:
        bulks = await recent_bulks(conn, limit=50)
    in_progress = [b for b in bulks if not b["complete"] and b["state"] in ("accepted", "partial")]
    return _page(request, "imports.html", bulks=bulks, in_progress=len(in_progress))


@router.get("/imports/{bulk_uuid}", response_class=HTMLResponse)
async def import_detail(
    request: Request, bulk_uuid: str, after: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0
) -> Response:
    if (redirect := _login_first(request)) is not None:
        return redirect
    async with request.app.state.database.acquire() as conn:
        try:
            uuid.UUID(bulk_uuid)
        except ValueError:
            raise ApiError(
                404, "unknown_bulk", f"No import {bulk_uuid!r}: an import's id is a UUID."
            ) from None
        bulk = await load_bulk(conn, bulk_uuid)
        if bulk is None:
            raise ApiError(404, "unknown_bulk", f"No import {bulk_uuid!r} is known here.")
        items = await load_items(conn, bulk_uuid, after=after, limit=100)
    next_after = items[-1]["id"] if len(items) == 100 else None
    return _page(request, "import.html", bulk=bulk, items=items, after=after, next_after=next_after)


# -- dead letters ----------------------------------------------------------------------------


async def _letters(request: Request) -> list[DeadLetterRecord]:
    settings = request.app.state.settings
    return await asyncio.get_running_loop().run_in_executor(
        None, lambda: list(read_dead_letters(settings.kafka, settings.runtime.dlq_topic))
    )


@router.get("/dead-letters", response_class=HTMLResponse)
async def dead_letters(
    request: Request,
    reason: str | None = None,
    sku: str | None = None,
    topic: str | None = None,
    job: str | None = None,
) -> Response:
    wanted = DeadLetterFilter(
        reason=reason or None, key=sku or None, topic=topic or None, job=job or None
    )
    letters = await _letters(request)
    matching = [r for r in letters if wanted.matches(r)]
    replayed = await _replayed(request)
    return _page(
        request,
        "dead_letters.html",
        total=len(letters),
        replayed_total=sum(1 for r in letters if (r.dlq_partition, r.dlq_offset) in replayed),
        by_reason=Counter(r.reason for r in letters).most_common(),
        replayed_by_reason=Counter(
            r.reason for r in letters if (r.dlq_partition, r.dlq_offset) in replayed
        ),
        by_job=Counter(r.job or "-" for r in letters).most_common(),
        filters={"reason": reason or "", "sku": sku or "", "topic": topic or "", "job": job or ""},
        matching=len(matching),
        letters=[dead_letter_view(r, replayed) for r in matching[:_SHOWN_LETTERS]],
    )


async def _replayed(request: Request) -> dict[tuple[int, int], Any]:
    """Which dead letters were replayed (shown, never hidden: a replay can fail again)."""
    settings = request.app.state.settings
    try:
        return await replayed_marks(settings.database.dsn, settings.runtime.dlq_topic)
    except StreamerError:
        return {}


def _chosen(letters: list[DeadLetterRecord], selected: list[str]) -> list[DeadLetterRecord]:
    wanted = set(selected)
    return [r for r in letters if f"{r.dlq_partition}:{r.dlq_offset}" in wanted]


@router.post("/dead-letters/replay", response_class=HTMLResponse)
async def replay(
    request: Request,
    selected: Annotated[list[str] | None, Form()] = None,
    csrf: Annotated[str | None, Form()] = None,
    confirm: Annotated[bool, Form()] = False,
) -> Response:
    """First a dry run of the selection (what would be sent, what was sent before);
    only the confirmation sends, each dead letter at most once (as ``dlq replay``)."""
    _writer(request, csrf)
    settings = request.app.state.settings
    if not selected:
        raise ApiError(
            422,
            "nothing_selected",
            "No dead letter was selected: tick the ones to replay, then ask for the dry run.",
        )
    chosen = _chosen(await _letters(request), selected)
    if not chosen:
        raise ApiError(
            422,
            "not_in_topic",
            "None of the selected dead letters is in the topic any more (retention may have "
            "removed them); reload the list.",
        )
    result = await replay_dead_letters(
        settings.kafka,
        settings.database,
        settings.runtime.dlq_topic,
        chosen,
        dry_run=not confirm,
    )
    return _page(
        request,
        "replay.html",
        confirmed=confirm,
        result=result,
        selected=[f"{r.dlq_partition}:{r.dlq_offset}" for r in chosen],
        letters=[dead_letter_view(r) for r in result.records],
    )


# -- jobs ----------------------------------------------------------------------------------


@router.get("/jobs", response_class=HTMLResponse)
async def jobs(request: Request) -> Response:
    """Each job's group, members, partitions and lag, read now; throughput and lag over the
    last hour from the samples this process keeps."""
    settings = request.app.state.settings
    sampler: JobSampler | None = getattr(request.app.state, "sampler", None)
    error: str | None = None
    views: list[JobView] = []
    try:
        views = await describe_jobs(settings)
    except StreamerError as exc:
        error = str(exc)
    now = time.time()
    charts: dict[str, Markup] = {}
    if sampler is not None:
        # The last hour, or less while this process has sampled for less (at least a minute).
        first = sampler.samples[0].at_s if sampler.samples else now
        span_s = min(3600.0, max(60.0, now - first))
        for name, series, unit in (
            ("throughput", sampler.throughput(), "messages/s committed"),
            ("lag", sampler.lag(), "messages"),
        ):
            charts[name] = Markup(  # noqa: S704 - built from escaped parts (charts.py)
                line_chart(
                    series,
                    title=name,
                    unit=unit,
                    now_s=now,
                    span_s=span_s,
                    chart_id=f"chart-{name}",
                )
            )
    return _page(
        request,
        "jobs.html",
        views=views,
        error=error,
        charts=charts,
        samples=len(sampler.samples) if sampler is not None else 0,
        interval_s=sampler.interval_s if sampler is not None else None,
        sample_error=sampler.last_error if sampler is not None else None,
    )


# -- galleries -------------------------------------------------------------------------------


@router.get("/galleries", response_class=HTMLResponse)
async def gallery(request: Request, sku: str | None = None) -> Response:
    settings = request.app.state.settings
    reader = request.app.state.gallery
    found: dict[str, Any] | None = None
    if sku and reader is not None:
        found = await reader(settings.database.dsn, sku.strip())
    thumbnails: dict[str, str] = {}
    if found is not None:
        s3 = request.app.state.s3
        ttl = settings.api.api_presign_ttl_s

        def sign() -> dict[str, str]:
            return {
                img["file_path"]: s3.generate_presigned_url(
                    "get_object",
                    Params={
                        "Bucket": settings.s3.s3_bucket,
                        "Key": s3_key(settings.s3.s3_prefix, img["file_path"]),
                    },
                    ExpiresIn=ttl,
                )
                for img in found["images"]
                if img["file_path"].lower().endswith(_IMAGE_SUFFIXES)
            }

        thumbnails = await asyncio.get_running_loop().run_in_executor(None, sign)
    return _page(
        request,
        "gallery.html",
        sku=sku or "",
        gallery=found,
        thumbnails=thumbnails,
        ttl_s=settings.api.api_presign_ttl_s,
        available=reader is not None,
    )
