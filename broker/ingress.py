"""HTTP ingress: `POST /` takes CloudEvents and answers 202 once they are stored.

A raw ASGI app rather than a FastAPI route, because this is the hot path. The checks
run in the order Knative's ingress uses, each with its own status: method (405), size
(413: the body and the `ce-*` headers together, and the count of extensions), who is
calling (401, from the headers before the body is read; a signature once it is), rate
limit (429 with Retry-After), parse and validate (400 naming the attribute, 415 for an
unreadable content type), allow rule (403, the whole request), a function's backlog at
its bound (503 with Retry-After, see broker/backlog.py), store (503), accepted (202).
Every stored event carries its sender in `fmeshsender` (see `Gate`). The header
section itself is bounded before this app runs (431, see the node).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext

from fmesh.broker.identity import Identity, PendingSignature, Principal
from fmesh.broker.policy import Gate

from fmesh.asgi import (
    Receive,
    Scope,
    Send,
    accepted,
    ce_header_bytes,
    check_declared_size,
    header_dict,
    read_stream,
    respond,
)
from fmesh.bindings.http import read_events
from fmesh.errors import (
    AuthError,
    Backlogged,
    ClientGone,
    EventTooLarge,
    Forbidden,
    InvalidEvent,
    RateLimited,
    StoreError,
    UnsupportedContentType,
)
from fmesh.events import DEFAULT_MAX_EXTENSIONS, Event, TooManyExtensions
from fmesh.ratelimit import retry_after_header
from fmesh.tracing import NOOP, Tracer, Transport, publish_traced, transport_of

Publish = Callable[[list[Event]], Awaitable[None]]
Caller = Principal | PendingSignature   # who the headers say is calling, before the body is checked

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
CHALLENGE = [(b"www-authenticate", b'Bearer realm="fmesh"')]


class Ingress:
    """The ASGI app behind `POST /`."""

    def __init__(self, publish: Publish, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
                 gate: Gate | None = None, max_extensions: int = DEFAULT_MAX_EXTENSIONS) -> None:
        self.publish = publish
        self.max_event_bytes = max_event_bytes
        self.max_extensions = max_extensions
        self.gate = gate or Gate(Identity(), "off")
        self.tracer: Tracer = NOOP
        self.turn: Callable[[], AbstractAsyncContextManager[object]] = nullcontext  # pacing (broker/pacing.py)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await respond(send, 405, {"error": "send CloudEvents with POST"}, [(b"allow", b"POST")])
            return
        try:
            caller, headers, body = await self.receive(scope, receive)
            async with self.turn():  # the work, paced; reading the body was only waiting
                events = self.read(caller, headers, body)
                await self.accept(events, send, transport_of(scope["headers"]))
        except ClientGone:
            return  # nobody to answer, and nothing whole to store
        except (EventTooLarge, TooManyExtensions) as exc:
            await respond(send, 413, {"error": str(exc), "limit": exc.limit})
        except AuthError as exc:
            await respond(send, 401, {"error": str(exc)}, CHALLENGE)
        except RateLimited as exc:
            await respond(send, 429, {"error": str(exc)}, [(b"retry-after", retry_after_header(exc.retry_after))])
        except UnsupportedContentType as exc:
            await respond(send, 415, {"error": str(exc)})
        except InvalidEvent as exc:
            await respond(send, 400, {"error": str(exc), "attribute": exc.attribute})
        except Forbidden as exc:
            await respond(send, 403, {"error": str(exc)})

    async def receive(self, scope: Scope, receive: Receive) -> tuple[Caller, dict[str, str], bytes]:
        """Who is calling, the headers and the body, once the size and the caller passed."""
        attributes = ce_header_bytes(scope)  # in binary mode they are part of the event
        body_limit = self.max_event_bytes - attributes
        try:
            check_declared_size(scope, body_limit)  # before anyone is asked who they are
            headers = header_dict(scope)
            caller = self.gate.identify(headers, scope)
            return caller, headers, await read_stream(receive, body_limit)
        except EventTooLarge as exc:
            raise EventTooLarge(exc.size + attributes, self.max_event_bytes) from None

    def read(self, caller: Caller, headers: dict[str, str], body: bytes) -> list[Event]:
        """The request's events, stamped with their sender, once every check before the store passed."""
        principal = self.gate.admit(caller, headers, body)
        events = read_events(headers, body, self.max_extensions)
        self.gate.permit(principal, events)
        return events

    async def accept(self, events: list[Event], send: Send, transport: Transport | None = None) -> None:
        """Store the events, each with a trace context (the request's W3C `traceparent`
        header is the parent of those that come without), and answer 202."""
        try:
            await publish_traced(self.publish, events, self.tracer, transport)
        except Backlogged as exc:
            await respond(send, 503, backlogged_body(exc), [(b"retry-after", retry_after_header(exc.retry_after))])
            return
        except StoreError as exc:
            await respond(send, 503, {"error": f"event not stored: {exc}"})
            return
        if len(events) == 1:
            await accepted(send, events[0].id)
        else:
            await respond(send, 202, {"accepted": len(events), "ids": [e.id for e in events]})


def backlogged_body(exc: Backlogged) -> dict:
    return {"error": str(exc), "subscription": exc.subscription, "waiting": exc.waiting, "limit": exc.limit}
