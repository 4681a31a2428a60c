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
from dataclasses import dataclass
from typing import Any

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
            await self.accept(request.events, send, request.transport())

    async def receive(self, scope: Scope, receive: Receive) -> tuple[Caller, dict[str, str], bytes]:
        """Who is calling, the headers and the body, once the size and the caller passed."""
        return await read_request(scope, receive, self.max_event_bytes, self.gate.identify)

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


@dataclass(slots=True)
class Answer:
    """An HTTP answer as data: what an ingress worker sends back for the mesh."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    async def send_to(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


@dataclass(slots=True)
class Forwarded:
    """A request to `POST /` as an ingress worker hands it on: the headers and client
    certificate (who is calling), the body only when a signature covers it, and either
    the parsed events or the worker's answer to events that did not parse."""

    headers: dict[str, str]
    tls: dict[str, Any] | None
    body: bytes | None
    events: list[Event]
    refusal: Answer | None = None

    def transport(self) -> Transport | None:
        return transport_of((name.encode("latin-1"), self.headers[name].encode("latin-1"))
                            for name in TRACE_HEADERS if name in self.headers)


TRACE_HEADERS = ("traceparent", "tracestate")


class Collector:
    """An ASGI `send` that keeps the answer instead of sending it."""

    def __init__(self) -> None:
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status, self.headers = message["status"], list(message.get("headers", []))
        else:
            self.body += message.get("body", b"")

    def answer(self) -> Answer:
        return Answer(self.status, self.headers, self.body)


async def read_request(scope: Scope, receive: Receive, max_event_bytes: int,
                       identify: Callable[[dict[str, str], Scope], Caller] | None = None,
                       ) -> tuple[Caller | None, dict[str, str], bytes]:
    """The headers and the body within `max_event_bytes` (the `ce-*` headers count: in binary
    mode they are the event's attributes), and who is calling once the size passed."""
    attributes = ce_header_bytes(scope)
    body_limit = max_event_bytes - attributes
    try:
        check_declared_size(scope, body_limit)  # before anyone is asked who they are
        headers = header_dict(scope)
        caller = identify(headers, scope) if identify is not None else None
        return caller, headers, await read_stream(receive, body_limit)
    except EventTooLarge as exc:
        raise EventTooLarge(exc.size + attributes, max_event_bytes) from None


async def take_post(scope: Scope, receive: Receive, send: Send,
                    take: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
    """`take` a POST, answering its refusals; any other method gets 405."""
    if scope["method"] != "POST":
        await respond(send, 405, {"error": "send CloudEvents with POST"}, [(b"allow", b"POST")])
        return
    await answer(send, take(scope, receive, send))


async def answer(send: Send, work: Awaitable[None]) -> None:
    """Run `work`, answering each refusal with its status and a body that says why."""
    try:
        await work
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
