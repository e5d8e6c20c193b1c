"""Tokens, console sessions and CSRF tokens, without a server."""

from __future__ import annotations

import pytest

from streamer.api.auth import TokenBook
from streamer.api.settings import ApiSettings
from streamer.config import load_section
from streamer.errors import ConfigError

pytestmark = pytest.mark.unit

FULL = "full-token-0123456789abcdef"
READ = "read-token-0123456789abcdef"


def book() -> TokenBook:
    return TokenBook([FULL], [READ])


def test_tokens_give_their_scope_and_nothing_else_passes() -> None:
    assert book().check(FULL).scope == "full"
    assert book().check(READ).scope == "read" and not book().check(READ).can_write
    for wrong in ("", FULL[:-1], FULL + "x", READ.upper()):
        assert book().check(wrong) is None


def test_a_session_names_its_token_without_carrying_it() -> None:
    principal = book().check(FULL)
    cookie = book().new_session(principal, now_s=1000, ttl_s=60)
    assert FULL not in cookie and principal.ref in cookie
    session = book().session(cookie, now_s=1030)
    assert session is not None and session.principal == principal
    assert book().session(cookie, now_s=1060) is None, "expired"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda c: c[:-2] + ("AA" if not c.endswith("AA") else "BB"),  # signature
        lambda c: c.replace(".", ".9", 1),  # expiry moved
        lambda c: "0" * 16 + c[16:],  # another token's reference
        lambda c: c + ".extra",
        lambda c: "",
    ],
)
def test_a_tampered_session_is_refused(tamper) -> None:
    cookie = book().new_session(book().check(FULL), now_s=1000, ttl_s=600)
    assert book().session(tamper(cookie), now_s=1001) is None


def test_removing_a_token_ends_its_sessions_and_a_read_session_stays_read() -> None:
    cookie = book().new_session(book().check(READ), now_s=0, ttl_s=600)
    assert TokenBook([FULL], []).session(cookie, now_s=1) is None
    assert book().session(cookie, now_s=1).principal.scope == "read"


def test_csrf_tokens_are_bound_to_their_session() -> None:
    b = book()
    one = b.session(b.new_session(b.check(FULL), now_s=0, ttl_s=600), now_s=1)
    two = b.session(b.new_session(b.check(FULL), now_s=0, ttl_s=600), now_s=1)
    assert b.csrf_ok(one, b.csrf_token(one))
    assert not b.csrf_ok(one, b.csrf_token(two))
    assert not b.csrf_ok(one, None) and not b.csrf_ok(one, "")


def test_short_tokens_are_refused_at_start_without_showing_them() -> None:
    with pytest.raises(ConfigError) as err:
        load_section(ApiSettings, None, {"api_tokens": f"{FULL},tiny-secret"})
    assert "STREAMER_API_TOKENS" in str(err.value) and "tiny-secret" not in str(err.value)
    settings = load_section(ApiSettings, None, {"api_tokens": f" {FULL} , {READ} "})
    assert settings.full_tokens() == [FULL, READ]
    assert FULL not in repr(settings)
