"""An ingress worker's way to the rest of the mesh: every request that is not an event
(the control API, the dashboard, webhook triggers, `fmesh logs -f`) goes on to the mesh
process over its Unix socket, both ways streamed, so that uploads and live views work
as they do on the mesh's own port. The mesh checks such a request as it checks any other.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from fmesh.asgi import Receive, Scope, Send, respond
from fmesh.errors import ClientGone

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade"})
UNREACHABLE = {"error": "the mesh process cannot be reached now (restarting?); try again"}


class Proxy:
    """The ASGI app that hands requests on to the mesh listening at `path`."""

    def __init__(self, path: Path) -> None:
        # The transport, not a client: a client keeps the cookies it is sent, and would hand
        # one user's dashboard session to the next. No read timeout: a live view may be
        # quiet for long; the mesh ends its streams itself.
        self.transport = httpx.AsyncHTTPTransport(uds=str(path), limits=httpx.Limits(max_connections=None,
                                                                                     max_keepalive_connections=64))
        self.timeout = httpx.Timeout(None, connect=5.0).as_dict()

    async def close(self) -> None:
        await self.transport.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP]
        has_body = any(k in (b"content-length", b"transfer-encoding") for k, _ in scope["headers"])
        target = (scope.get("raw_path") or scope["path"].encode()) + (b"?" + scope["query_string"]
                                                                       if scope.get("query_string") else b"")
        try:
            request = httpx.Request(scope["method"], httpx.URL("http://mesh").copy_with(raw_path=target),
                                    headers=headers, content=_body(receive) if has_body else None,
                                    extensions={"timeout": self.timeout})
        except (httpx.InvalidURL, ValueError) as exc:
            await respond(send, 400, {"error": f"cannot take this request's target: {exc}"})
            return
        try:
            response = await self.transport.handle_async_request(request)
        except ClientGone:
            return
        except httpx.TransportError:
            await respond(send, 503, UNREACHABLE, [(b"retry-after", b"1")])
            return
        try:
            await _relay(response, receive, send)
        finally:
            await response.aclose()


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone(0)
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def _relay(response: httpx.Response, receive: Receive, send: Send) -> None:
    """The response as it comes, until it ends or the client goes (a stream that
    nobody reads any more is then closed, not left running)."""
    headers = [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    streaming = asyncio.ensure_future(_stream(response, send))
    gone = asyncio.ensure_future(_disconnect(receive))
    await asyncio.wait((streaming, gone), return_when=asyncio.FIRST_COMPLETED)
    for task in (streaming, gone):
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, httpx.TransportError):
        await streaming


async def _stream(response: httpx.Response, send: Send) -> None:
    try:
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except httpx.TransportError:
        pass  # the mesh ended the stream (it is stopping): end it here too
    await send({"type": "http.response.body", "body": b""})


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
