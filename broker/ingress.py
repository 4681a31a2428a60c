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
from fmesh.broker.ingress_http import Forwarded, answer, read_request, take_post
from fmesh.broker.policy import Gate

from fmesh.asgi import Receive, Scope, Send, accepted, respond
from fmesh.bindings.http import read_events, utf8_attributes
from fmesh.errors import Backlogged, StoreError
from fmesh.events import DEFAULT_MAX_EXTENSIONS, Event
from fmesh.ratelimit import retry_after_header
from fmesh.tracing import NOOP, Tracer, Transport, publish_traced, transport_of

Publish = Callable[[list[Event]], Awaitable[None]]
Caller = Principal | PendingSignature   # who the headers say is calling, before the body is checked

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024


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
        await take_post(scope, receive, send, self._take)

    async def _take(self, scope: Scope, receive: Receive, send: Send) -> None:
        caller, headers, body = await self.receive(scope, receive)
        async with self.turn():  # the work, paced; reading the body was only waiting
            events = self.read(caller, headers, body)
            await self.accept(events, send, transport_of(scope["headers"]))

    async def forwarded(self, request: Forwarded, send: Send) -> None:
        """A request an ingress worker read and parsed (see `IngressFront`): the checks that
        need this mesh's state run here, in the order `__call__` runs them."""
        await answer(send, self._take_forwarded(request, send))

    async def _take_forwarded(self, request: Forwarded, send: Send) -> None:
        caller = self.gate.identify(request.headers, {"extensions": {"tls": request.tls}})
        async with self.turn():
            principal = self.gate.admit(caller, request.headers, request.body or b"")
            if request.refusal is not None:  # what the worker found wrong with the events
                await request.refusal.send_to(send)
                return
            self.gate.permit(principal, request.events)
            await self.accept(request.events, send, forwarded_transport(request.headers))

    async def receive(self, scope: Scope, receive: Receive) -> tuple[Caller, dict[str, str], bytes]:
        """Who is calling, the headers and the body, once the size and the caller passed."""
        return await read_request(scope, receive, self.max_event_bytes, self.gate.identify)

    def read(self, caller: Caller, headers: dict[str, str], body: bytes) -> list[Event]:
        """The request's events, stamped with their sender, once every check before the store passed."""
        principal = self.gate.admit(caller, headers, body)
        events = read_events(utf8_attributes(headers), body, self.max_extensions)
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


TRACE_HEADERS = ("traceparent", "tracestate")


def forwarded_transport(headers: dict[str, str]) -> Transport | None:
    """The trace context of a forwarded request, from its headers."""
    return transport_of((name.encode("latin-1"), headers[name].encode("latin-1"))
                        for name in TRACE_HEADERS if name in headers)
