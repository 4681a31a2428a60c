"""The control API's bound on a request body: FastAPI reads a JSON body whole before it
checks the token, so without one anybody who can reach the port makes the mesh hold
whatever they send. A function's code has its own, larger bound (PUT /v1/bundles/...)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fmesh.asgi import read_body, respond
from fmesh.errors import ClientGone, EventTooLarge

MAX_CONTROL_BODY_BYTES = 4 * 1024 * 1024  # a manifest of thousands of functions fits in far less
STREAMED_PREFIX = "/v1/bundles/"          # read by the route itself, against MAX_BUNDLE_BYTES


class ControlBodyLimit:
    """ASGI middleware: a body past `limit` gets a 413 naming the limit, before any route reads it."""

    def __init__(self, app: ASGIApp, limit: int = MAX_CONTROL_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD") or scope["path"].startswith(STREAMED_PREFIX):
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(scope, receive, self.limit)
        except EventTooLarge as exc:
            await respond(send, 413, {"error": f"request body of {exc.size} bytes or more exceeds the control "
                                               f"API's limit of {exc.limit} bytes"}, [(b"connection", b"close")])
            return
        except ClientGone:
            return  # nobody is left to answer
        await self.app(scope, replay(body, receive), send)


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the body already read, then whatever the client sends next (a disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive_again() -> Message:
        return pending.pop() if pending else await receive()

    return receive_again
