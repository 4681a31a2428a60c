"""The half of `POST /` an ingress worker runs, in a process of its own: the method, the
size, reading the body and parsing the events, which is most of an event's cost at the
ingress. What needs the mesh's state (who is calling, rate limits, allow rules, backlogs,
the store) stays with the mesh: it gets a `Forwarded` and answers it (`Ingress.forwarded`).

A caller's credentials are checked there too, after the body is read here: a token
revoked a moment ago is then refused at once, as it is by the mesh's own ingress.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fmesh.broker.ingress_http import Answer, Collector, Forwarded, answer, read_request, take_post

from fmesh.asgi import Receive, Scope, Send, respond
from fmesh.bindings.http import read_events, utf8_attributes
from fmesh.errors import InvalidEvent, UnsupportedContentType
from fmesh.events import DEFAULT_MAX_EXTENSIONS
from fmesh.signing import PEER_HEADER

HandOn = Callable[[Forwarded], Awaitable[Answer]]   # to the mesh; ConnectionError when it cannot be reached
UNREACHABLE = {"error": "the mesh process cannot be reached now (restarting?); nothing was stored, send again"}


class IngressFront:
    """The ASGI app an ingress worker serves at `POST /`."""

    def __init__(self, hand_on: HandOn, max_event_bytes: int, max_extensions: int = DEFAULT_MAX_EXTENSIONS) -> None:
        self.hand_on = hand_on
        self.max_event_bytes = max_event_bytes
        self.max_extensions = max_extensions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await take_post(scope, receive, send, self._take)

    async def _take(self, scope: Scope, receive: Receive, send: Send) -> None:
        _, headers, body = await read_request(scope, receive, self.max_event_bytes)
        tls = scope.get("extensions", {}).get("tls")
        request = Forwarded(headers, tls, body if PEER_HEADER in headers else None, [])
        try:
            request.events = read_events(utf8_attributes(headers), body, self.max_extensions)
        except (InvalidEvent, UnsupportedContentType) as exc:
            request.refusal = await refusal(exc)  # said only once the mesh knows who is calling
        try:
            reply = await self.hand_on(request)
        except ConnectionError:
            await respond(send, 503, UNREACHABLE, [(b"retry-after", b"1")])
            return
        await reply.send_to(send)


async def refusal(exc: Exception) -> Answer:
    """The answer the ingress gives to `exc`."""
    async def fail() -> None:
        raise exc

    collector = Collector()
    await answer(collector, fail())
    return collector.answer()
