"""The HTTP side of `POST /`, shared by the mesh's ingress (broker/ingress.py) and the
ingress workers' (broker/ingress_front.py): reading a request within its size, answering
each refusal with its status, and an answer or a forwarded request as data. Light on
purpose: a worker imports this, not the mesh's policies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fmesh.asgi import Receive, Scope, Send, ce_header_bytes, check_declared_size, header_dict, read_stream, respond
from fmesh.errors import (
    AuthError,
    ClientGone,
    EventTooLarge,
    Forbidden,
    InvalidEvent,
    RateLimited,
    UnsupportedContentType,
)
from fmesh.events import Event, TooManyExtensions
from fmesh.ratelimit import retry_after_header

CHALLENGE = [(b"www-authenticate", b'Bearer realm="fmesh"')]
Identify = Callable[[dict[str, str], Scope], Any]   # who the headers say is calling (the mesh's Gate)


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
                       identify: Identify | None = None) -> tuple[Any, dict[str, str], bytes]:
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
