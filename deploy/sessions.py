"""Dashboard sessions: a read or admin token, given once to `POST /ui/login`, becomes a
random session id in an HttpOnly, SameSite=Strict cookie, so that the page never holds
the token and EventSource (which sends no headers) can be authenticated.

Sessions live in the node's memory, each with its principal, the SHA-256 of the token it
was opened with (revoking that token ends it at once), an expiry, and a CSRF token that
every state-changing call made with the cookie must repeat in `X-CSRF-Token`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import HTTPException, Request
from fmesh.broker.identity import Identity, Principal, token_digest
from fmesh.broker.policy import READ_METHODS

COOKIE = "fmesh_session"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL = 12 * 3600.0   # seconds a login lasts
MAX_SESSIONS = 1000         # past this, the session closest to expiring goes


@dataclass(frozen=True, slots=True)
class Session:
    principal: Principal
    token_sha256: bytes   # of the token it was opened with, never the token
    csrf: str
    expires: float


class Sessions:
    """Open dashboard sessions, kept by the SHA-256 of their id."""

    def __init__(self, identity: Identity, clock: Callable[[], float] = time.time,
                 ttl: float = SESSION_TTL, limit: int = MAX_SESSIONS) -> None:
        self._identity = identity
        self._clock = clock
        self._ttl = ttl
        self._limit = limit
        self._open: dict[bytes, Session] = {}

    def open(self, token: str) -> tuple[str, Session] | None:
        """A new session for `token` (its id, and the session); None when no one has that token.
        A token that may only publish gets PermissionError: the dashboard needs read or admin."""
        digest = token_digest(token)
        principal = self._identity.bearer_digest(digest)
        if principal is None:
            return None
        if principal.scope not in ("read", "admin"):
            raise PermissionError(f"{principal.name} may only publish events: the dashboard needs a read or "
                                  "admin token")
        self._make_room()
        session_id = secrets.token_urlsafe(32)
        session = Session(principal, digest, secrets.token_urlsafe(32), self._clock() + self._ttl)
        self._open[_key(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id: not expired, and its token still known as the same principal."""
        if not session_id:
            return None
        key = _key(session_id)
        session = self._open.get(key)
        if session is None:
            return None
        if session.expires <= self._clock() or self._identity.bearer_digest(session.token_sha256) != session.principal:
            del self._open[key]
            return None
        return session

    def close(self, session_id: str | None) -> None:
        if session_id:
            self._open.pop(_key(session_id), None)

    def principal(self, request: Request) -> Principal | None:
        """The principal of the request's session cookie, if it has a live one. A call that
        changes something must also carry the session's CSRF token (403 otherwise): a page on
        another site can make the browser send the cookie, but cannot read the token."""
        session = self.get(request.cookies.get(COOKIE))
        if session is None:
            return None
        if request.method not in READ_METHODS and not hmac.compare_digest(
                request.headers.get(CSRF_HEADER, "").encode(), session.csrf.encode()):
            raise HTTPException(403, f"a call with the dashboard's session cookie needs the {CSRF_HEADER} header "
                                "it was given at login")
        return session.principal

    def __len__(self) -> int:
        return len(self._open)

    def _make_room(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._open.items() if s.expires <= now]:
            del self._open[key]
        while len(self._open) >= self._limit:
            del self._open[min(self._open, key=lambda k: self._open[k].expires)]


def _key(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()
