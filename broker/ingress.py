"""HTTP ingress: `POST /` takes CloudEvents and answers 202 once they are stored.

A raw ASGI app rather than a FastAPI route, because this is the hot path. The checks
run in the order Knative's ingress uses, each with its own status: method (405), size
(413), parse and validate (400 naming the attribute, 415 for an unreadable content
type), store (503), accepted (202).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fmesh.asgi import Receive, Scope, Send, accepted, header_dict, read_body, respond
from fmesh.bindings.http import read_events
from fmesh.errors import EventTooLarge, InvalidEvent, StoreError, UnsupportedContentType
from fmesh.events import Event

Publish = Callable[[list[Event]], Awaitable[None]]

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024


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
            await accepted(send, events[0].id)
        else:
            await respond(send, 202, {"accepted": len(events), "ids": [e.id for e in events]})
