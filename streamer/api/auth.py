"""Who is calling: bearer tokens, the console's session cookie and its CSRF tokens. Pure.

- A bearer token is compared with every configured token in constant time
  (``hmac.compare_digest``, and no early exit), so timing tells nothing about a token.
- The console's session cookie never carries a token: it carries a reference to one
  (a hash prefix), an expiry and a nonce, signed with a key derived from the token it
  refers to. Removing a token from the configuration ends its sessions; a cookie
  cannot be forged without the token, and every replica with the same tokens accepts it.
- CSRF: every console form carries a token derived from the session's key and nonce;
  a request authenticated by a bearer header needs none (browsers never send one
  on their own).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Literal

__all__ = ["Principal", "Session", "TokenBook"]

Scope = Literal["full", "read"]
_SESSION_LABEL = b"streamer-console-session-v1"


def _ref(token: str) -> str:
    return hashlib.sha256(b"streamer-token-ref:" + token.encode()).hexdigest()[:16]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True)
class Principal:
    scope: Scope
    ref: str  # which token (a hash prefix): never the token

    @property
    def can_write(self) -> bool:
        return self.scope == "full"


@dataclass(frozen=True)
class Session:
    principal: Principal
    expires_at: int
    nonce: str


class TokenBook:
    def __init__(self, full: list[str], read: list[str]) -> None:
        self._tokens: list[tuple[bytes, Scope]] = [(t.encode(), "full") for t in full] + [
            (t.encode(), "read") for t in read
        ]
        self._by_ref = {_ref(t.decode()): (t, scope) for t, scope in self._tokens}

    @property
    def empty(self) -> bool:
        return not self._tokens

    def check(self, presented: str) -> Principal | None:
        """The principal of a presented bearer token, or None."""
        candidate = presented.encode()
        found: Principal | None = None
        for token, scope in self._tokens:  # every token compared: no early exit
            if hmac.compare_digest(candidate, token) and found is None:
                found = Principal(scope, _ref(token.decode()))
        return found

    # -- sessions -----------------------------------------------------------------------

    def _key(self, ref: str) -> tuple[bytes, Scope] | None:
        entry = self._by_ref.get(ref)
        if entry is None:
            return None
        token, scope = entry
        return hmac.new(token, _SESSION_LABEL, hashlib.sha256).digest(), scope

    def new_session(self, principal: Principal, *, now_s: int, ttl_s: int) -> str:
        """A signed cookie value for ``principal``."""
        key = self._key(principal.ref)
        if key is None:
            raise ValueError("principal has no token")
        body = f"{principal.ref}.{now_s + ttl_s}.{secrets.token_urlsafe(12)}"
        signature = _b64(hmac.new(key[0], body.encode(), hashlib.sha256).digest())
        return f"{body}.{signature}"

    def session(self, cookie: str | None, *, now_s: int) -> Session | None:
        """The session of a cookie value, or None if forged, expired or its token is gone."""
        if not cookie:
            return None
        parts = cookie.split(".")
        if len(parts) != 4:
            return None
        ref, expires, nonce, signature = parts
        key = self._key(ref)
        if key is None or not expires.isdigit():
            return None
        expected = _b64(
            hmac.new(key[0], f"{ref}.{expires}.{nonce}".encode(), hashlib.sha256).digest()
        )
        if not hmac.compare_digest(expected, signature) or int(expires) <= now_s:
            return None
        return Session(Principal(key[1], ref), int(expires), nonce)

    # -- CSRF ---------------------------------------------------------------------------

    def csrf_token(self, session: Session) -> str:
        key = self._key(session.principal.ref)
        if key is None:
            raise ValueError("session has no token")
        return _b64(hmac.new(key[0], b"csrf:" + session.nonce.encode(), hashlib.sha256).digest())

    def csrf_ok(self, session: Session, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.csrf_token(session), presented or "")
