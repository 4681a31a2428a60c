"""The web dashboard at /ui: static files shipped in the package (deploy/ui/), a login that
turns a read or admin token into a session cookie (see fmesh.deploy.sessions), and a live
status stream over server-sent events. Everything else the page shows comes from /v1.

Every /ui answer carries a strict Content-Security-Policy (scripts and styles only from
/ui itself, nothing inline), and may not be framed; /ui and /v1 answers are never cached.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from fmesh.broker.identity import Identity
from fmesh.deploy.live import LiveStreams
from fmesh.deploy.sessions import COOKIE, Session, Sessions

from fmesh.asgi import ASGIApp, Receive, Scope, Send, read_body
from fmesh.errors import ClientGone, EventTooLarge

UI_DIR = Path(__file__).parent / "ui"
FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
         "style.css": "text/css; charset=utf-8"}
MAX_LOGIN_BYTES = 4096

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
NO_STORE = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff")]
UI_HEADERS = [*NO_STORE, (b"content-security-policy", CSP.encode()), (b"x-frame-options", b"DENY"),
              (b"referrer-policy", b"no-referrer"), (b"cross-origin-opener-policy", b"same-origin")]


class SecurityHeaders:
    """ASGI middleware: the dashboard's headers on /ui answers, no-store and nosniff on /v1's."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        extra = UI_HEADERS if _under(path, "/ui") else NO_STORE if _under(path, "/v1") else None
        if extra is None:
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                message = {**message, "headers": headers + [h for h in extra if h[0] not in present]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def add_dashboard_routes(app: FastAPI, sessions: Sessions, identity: Identity, auth: list,
                         live: LiveStreams) -> None:
    """/ui (the page and its files), /ui/login, /ui/logout, /ui/session and /ui/live."""
    files = {name: (UI_DIR / name).read_bytes() for name in FILES}

    @app.get("/ui", include_in_schema=False)
    @app.get("/ui/", include_in_schema=False)
    async def page() -> Response:
        return Response(files["index.html"], media_type=FILES["index.html"])

    @app.post("/ui/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        if request.headers.get("sec-fetch-site") == "cross-site":
            raise HTTPException(403, "a login must come from the dashboard's own page")
        try:
            opened = sessions.open(await login_token(request))
        except PermissionError as exc:
            raise HTTPException(403, str(exc)) from exc
        if opened is None:
            raise HTTPException(401, "wrong token: give the mesh's admin token or one made with "
                                "`fmesh tokens create --scope read`")
        session_id, session = opened
        response = JSONResponse(session_json(session))
        response.set_cookie(COOKIE, session_id, max_age=int(session.expires - time.time()), path="/",
                            httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return response

    @app.post("/ui/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        sessions.principal(request)  # 403 without the CSRF token: another site cannot log you out
        sessions.close(request.cookies.get(COOKIE))
        response = JSONResponse({"logged_out": True})
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict",
                               secure=request.url.scheme == "https")
        return response

    @app.get("/ui/session", include_in_schema=False)
    async def session(request: Request) -> dict[str, Any]:
        """Who the cookie's session is, and its CSRF token (readable by this origin only)."""
        found = sessions.get(request.cookies.get(COOKIE))
        if found is None:
            raise HTTPException(401, "not logged in")
        return session_json(found)

    @app.get("/ui/live", include_in_schema=False, dependencies=auth)
    async def live_status(request: Request) -> StreamingResponse:
        return live.response(lambda: still_allowed(request, sessions, identity))

    @app.get("/ui/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in FILES:
            raise HTTPException(404, f"no dashboard file named {name[:64]!r}")
        return Response(files[name], media_type=FILES[name])


def session_json(session: Session) -> dict[str, Any]:
    return {"principal": session.principal.name, "scope": session.principal.scope, "csrf": session.csrf,
            "expires": session.expires}


async def login_token(request: Request) -> str:
    """The token of a login: JSON {"token": ...} or a form's token=...; 400 or 413 otherwise."""
    try:
        body = await read_body(request.scope, request.receive, MAX_LOGIN_BYTES)
    except EventTooLarge as exc:
        raise HTTPException(413, f"a login is at most {MAX_LOGIN_BYTES} bytes") from exc
    except ClientGone as exc:
        raise HTTPException(400, "the login ended before its body did") from exc
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    token: Any = None
    try:
        if media == "application/x-www-form-urlencoded":
            token = urllib.parse.parse_qs(body.decode(), strict_parsing=False).get("token", [None])[0]
        else:
            parsed = json.loads(body)
            token = parsed.get("token") if isinstance(parsed, dict) else None
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(400, "a login is JSON {\"token\": \"...\"} or a form with token=...") from exc
    if not isinstance(token, str) or not token.strip():
        raise HTTPException(400, "a login needs a token: JSON {\"token\": \"...\"} or a form with token=...")
    return token.strip()


def still_allowed(request: Request, sessions: Sessions, identity: Identity) -> bool:
    """Whether the credentials a stream was opened with still hold (checked at each message)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return identity.bearer(token.strip()) is not None
    return sessions.get(request.cookies.get(COOKIE)) is not None
