"""The dashboard's server side in-process (issue 14, item 6): its headers, the login that
turns a token into a session cookie, CSRF on what changes things, read sessions, revoked
tokens, and the bounds of the live stream. The page itself is tested in a real browser
(tests/e2e/test_dashboard.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, HTTPException
from fmesh.broker.identity import ADMIN, Identity, token_digest
from fmesh.deploy.live import LiveStreams
from fmesh.deploy.server import build
from fmesh.deploy.sessions import COOKIE, Sessions
from inprocess_uvicorn import serving

from fmesh.settings import NodeSettings

TOKEN = "dashboard-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator:
    node, _, _ = build(NodeSettings(data_dir=tmp_path / "data", store="memory://", token=TOKEN, launcher="subprocess"))
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


def client(node, scheme: str = "http") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(node), base_url=f"{scheme}://mesh")


async def login(browser: httpx.AsyncClient, token: str = TOKEN) -> str:
    """Log `browser` in (it keeps the session cookie); the session's CSRF token."""
    answer = await browser.post("/ui/login", json={"token": token})
    assert answer.status_code == 200, answer.text
    return answer.json()["csrf"]


async def read_token(node, name: str = "viewer") -> str:
    async with client(node) as api:
        made = await api.post("/v1/tokens", json={"name": name, "scope": "read"}, headers=AUTH)
        return made.json()["token"]


async def test_the_page_and_its_files_are_served_with_a_strict_policy(node):
    async with client(node) as browser:
        page = await browser.get("/ui")
        script = await browser.get("/ui/app.js")
        style = await browser.get("/ui/style.css")
        missing = await browser.get("/ui/../deploy/api.py")
        status = await browser.get("/v1/status", headers=AUTH)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/ui/app.js"' in page.text and "<style" not in page.text and " style=" not in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    assert script.headers["content-type"].startswith("text/javascript") and "innerHTML" not in script.text
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    assert missing.status_code == 404 and "error" in missing.json()
    assert status.headers["cache-control"] == "no-store" and status.headers["x-content-type-options"] == "nosniff"


async def test_a_login_gives_an_httponly_strict_cookie_and_a_csrf_token_never_the_token(node):
    async with client(node) as browser:
        answer = await browser.post("/ui/login", json={"token": TOKEN})
        session = await browser.get("/ui/session")
    assert answer.status_code == 200
    assert answer.json()["principal"] == "admin" and answer.json()["scope"] == "admin" and answer.json()["csrf"]
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Path=/" in cookie and "Secure" not in cookie  # plain HTTP here; see the HTTPS test
    assert TOKEN not in cookie and TOKEN not in answer.text
    assert session.json()["csrf"] == answer.json()["csrf"]


async def test_over_https_the_cookie_is_secure(node):
    async with client(node, "https") as browser:
        answer = await browser.post("/ui/login", json={"token": TOKEN})
    assert "Secure" in answer.headers["set-cookie"]


@pytest.mark.parametrize(("body", "status", "said"), [
    ({"json": {"token": "wrong"}}, 401, "wrong token"),
    ({"json": {}}, 400, "needs a token"),
    ({"json": {"token": 7}}, 400, "needs a token"),
    ({"json": ["token"]}, 400, "needs a token"),
    ({"content": b"\xff{", "headers": {"content-type": "application/json"}}, 400, "is JSON"),
    ({"content": b"x" * 5000, "headers": {"content-type": "application/json"}}, 413, "at most"),
    ({"data": {"token": "wrong"}}, 401, "wrong token"),
])
async def test_a_bad_login_is_a_clear_4xx(node, body, status, said):
    async with client(node) as browser:
        answer = await browser.post("/ui/login", **body)
    assert answer.status_code == status and said in answer.json()["error"]
    assert "set-cookie" not in answer.headers


async def test_a_form_login_works_and_a_cross_site_one_is_refused(node):
    async with client(node) as browser:
        form = await browser.post("/ui/login", data={"token": TOKEN})
        cross = await browser.post("/ui/login", data={"token": TOKEN}, headers={"sec-fetch-site": "cross-site"})
    assert form.status_code == 200 and form.json()["scope"] == "admin"
    assert cross.status_code == 403 and "set-cookie" not in cross.headers


async def test_a_publish_token_cannot_open_the_dashboard(node):
    async with client(node) as api:
        made = (await api.post("/v1/tokens", json={"name": "sender", "scope": "publish"}, headers=AUTH)).json()
        answer = await api.post("/ui/login", json={"token": made["token"]})
    assert answer.status_code == 403 and "read or admin" in answer.json()["error"]


async def test_the_cookie_authenticates_the_api_but_changes_need_the_csrf_header(node):
    async with client(node) as browser:
        csrf = await login(browser)
        status = await browser.get("/v1/status")
        without = await browser.post("/v1/dead-letters/replay", json={"ids": [1]})
        wrong = await browser.post("/v1/dead-letters/replay", json={"ids": [1]}, headers={"x-csrf-token": "no"})
        right = await browser.post("/v1/dead-letters/replay", json={"ids": [1]}, headers={"x-csrf-token": csrf})
    assert status.status_code == 200 and status.json()["mesh"] == node.mesh_id
    assert without.status_code == 403 and "x-csrf-token" in without.json()["error"]
    assert wrong.status_code == 403
    assert right.status_code == 200 and right.json()["not_found"] == [1]


async def test_a_read_session_reads_and_is_refused_changes(node):
    async with client(node) as browser:
        csrf = await login(browser, await read_token(node))
        session = (await browser.get("/ui/session")).json()
        letters = await browser.get("/v1/dead-letters")
        replay = await browser.post("/v1/dead-letters/replay", json={"ids": [1]}, headers={"x-csrf-token": csrf})
        purge = await browser.delete("/v1/dead-letters", headers={"x-csrf-token": csrf})
    assert session["principal"] == "token:viewer" and session["scope"] == "read"
    assert letters.status_code == 200
    assert replay.status_code == 403 and purge.status_code == 403 and "admin" in replay.json()["error"]


async def test_without_a_session_everything_but_the_page_is_401(node):
    async with client(node) as browser:
        answers = [await browser.get(path) for path in ("/v1/status", "/ui/session", "/ui/live")]
        browser.cookies.set(COOKIE, "made-up")
        answers.append(await browser.get("/v1/status"))
        page = await browser.get("/ui")
    assert [a.status_code for a in answers] == [401] * 4
    assert page.status_code == 200


async def test_revoking_the_token_ends_its_sessions(node):
    async with client(node) as browser, client(node) as api:
        await login(browser, await read_token(node))
        assert (await browser.get("/v1/status")).status_code == 200
        assert (await api.delete("/v1/tokens/viewer", headers=AUTH)).status_code == 200
        assert (await browser.get("/v1/status")).status_code == 401
        assert (await browser.get("/ui/session")).status_code == 401
        await read_token(node)  # a new token of the same name does not bring the old session back
        assert (await browser.get("/v1/status")).status_code == 401


async def test_logout_needs_the_csrf_token_and_ends_the_session(node):
    async with client(node) as browser:
        csrf = await login(browser)
        refused = await browser.post("/ui/logout")
        assert (await browser.get("/v1/status")).status_code == 200
        cookie = browser.cookies[COOKIE]
        done = await browser.post("/ui/logout", headers={"x-csrf-token": csrf})
        browser.cookies.set(COOKIE, cookie)  # the old cookie, sent again
        after = await browser.get("/v1/status")
    assert refused.status_code == 403
    assert done.status_code == 200 and f'{COOKIE}=""' in done.headers["set-cookie"]
    assert after.status_code == 401


def test_sessions_expire_and_are_bounded():
    now = [1000.0]
    identity = Identity()
    identity.add_bearer(token_digest("t"), ADMIN)
    sessions = Sessions(identity, clock=lambda: now[0], ttl=60, limit=3)
    first, _ = sessions.open("t")
    assert sessions.get(first) is not None
    now[0] += 61
    assert sessions.get(first) is None
    ids = [sessions.open("t")[0] for _ in range(5)]
    assert len(sessions) == 3 and sessions.get(ids[0]) is None and sessions.get(ids[-1]) is not None
    assert sessions.open("not-a-token") is None


async def test_live_streams_are_bounded_and_end_when_their_session_does():
    async def snapshot() -> dict:
        return {"functions": []}

    live = LiveStreams(snapshot, interval=0.01, limit=1)
    allowed = [True]
    response = live.response(lambda: allowed[0])
    with pytest.raises(HTTPException) as full:
        live.response(lambda: True)
    assert full.value.status_code == 503 and "1 live streams" in full.value.detail
    messages = response.body_iterator.__aiter__()
    assert await anext(messages) == b"retry: 2000\n\n"
    assert await anext(messages) == b'event: status\ndata: {"functions":[]}\n\n'
    allowed[0] = False
    with pytest.raises(StopAsyncIteration):
        while True:
            await anext(messages)


async def test_a_live_stream_gives_its_place_back_as_soon_as_its_client_goes():
    """Not at its next status message, here an hour away. (Starlette listens for the disconnect
    while the server speaks ASGI below 2.4, as uvicorn does; under 2.4 it would learn of it
    only when a send fails.)"""
    async def snapshot() -> dict:
        return {"functions": []}

    live = LiveStreams(snapshot, interval=3600, limit=1)
    app = FastAPI()
    app.get("/ui/live")(lambda: live.response(lambda: True))
    async with serving(uvicorn.Config(app, log_level="warning")) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            async with client.stream("GET", "/ui/live") as stream:
                lines = stream.aiter_lines()
                while not (await anext(lines)).startswith("data: "):
                    pass
                assert live.open == 1
        async with asyncio.timeout(5):
            while live.open:
                await asyncio.sleep(0.01)
