"""HTTP ingress: `POST /` takes CloudEvents and answers 202 once they are stored.

A raw ASGI app rather than a FastAPI route, because this is the hot path. The checks
run in the order Knative's ingress uses, each with its own status: method (405), size
(413), parse and validate (400 naming the attribute, 415 for an unreadable content
type), store (503), accepted (202).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fmesh.broker.http_binding import read_events
from fmesh.errors import EventTooLarge, InvalidEvent, StoreError, UnsupportedContentType
from fmesh.events import Event

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Publish = Callable[[list[Event]], Awaitable[None]]

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
JSON_HEADERS = [(b"content-type", b"application/json")]


async def respond(send: Send, status: int, body: dict[str, Any], headers: list | None = None) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [*JSON_HEADERS, *(headers or []), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def header_dict(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, refusing (EventTooLarge) as soon as it passes `limit`."""
    declared = next((int(v) for k, v in scope["headers"] if k == b"content-length" and v.isdigit()), None)
    if declared is not None and declared > limit:
        raise EventTooLarge(declared, limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise EventTooLarge(size, limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class Ingress:
    """The ASGI app behind `POST /`."""

    def __init__(self, publish: Publish, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.publish = publish
        self.max_event_bytes = max_event_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await respond(send, 405, {"error": "send CloudEvents with POST"}, [(b"allow", b"POST")])
            return
        try:
            body = await read_body(scope, receive, self.max_event_bytes)
            events = read_events(header_dict(scope), body)
        except EventTooLarge as exc:
            await respond(send, 413, {"error": str(exc), "limit": exc.limit})
            return
        except UnsupportedContentType as exc:
            await respond(send, 415, {"error": str(exc)})
            return
        except InvalidEvent as exc:
            await respond(send, 400, {"error": str(exc), "attribute": exc.attribute})
            return
        await self.accept(events, send)

    async def accept(self, events: list[Event], send: Send) -> None:
        try:
            await self.publish(events)
        except StoreError as exc:
            await respond(send, 503, {"error": f"event not stored: {exc}"})
            return
        if len(events) == 1:
            await respond(send, 202, {"id": events[0].id})
        else:
            await respond(send, 202, {"accepted": len(events), "ids": [e.id for e in events]})
