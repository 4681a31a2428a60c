"""Spans of an event's hops, behind a small contract: the `Tracer`.

Every event in the mesh carries a trace context (`fmesh.tracecontext`); the hops make
spans of it: one where an event enters (`publish <type>`, PRODUCER), one per delivery
attempt (`deliver <subscription>`: CONSUMER for a function, CLIENT for a sink or a
bridge), one per reply (`reply <subscription>`, PRODUCER, the attempt's child, whose
context the reply carries). The broker and the runtime see only `Tracer`; the node
installs one that exports over OTLP (`fmesh up --otlp-endpoint`, see
`fmesh.deploy.otel`). The default, `NOOP`, records nothing and costs next to nothing:
a span of it is only the context the next hop needs, made when first asked for.

While a delivery attempt runs, its span is the current hop (`HOP`, a context variable):
a sink or a command function's POST sends it as the W3C `traceparent` header, so an
instrumented receiver joins the trace.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, Protocol

from fmesh.bindings.common import describe
from fmesh.errors import InvalidEvent
from fmesh.events import Event
from fmesh.tracecontext import (
    TRACEPARENT,
    TRACESTATE,
    TraceContext,
    check_tracestate,
    context_of,
    new_context,
    new_traceparent,
    parse_traceparent,
)

SERVER, CLIENT, PRODUCER, CONSUMER = "server", "client", "producer", "consumer"
Parent = TraceContext | str | None
"""A span's parent: a context, a `traceparent` value (read when needed), or none (a new trace)."""
Transport = tuple[TraceContext, str | None]
"""The W3C context of a request that brought events: its `traceparent`, and `tracestate`."""


class Span(Protocol):
    """One hop of an event, open until `end`."""

    @property
    def context(self) -> TraceContext:
        """This span's own context: what the next hop names as its parent."""

    def end(self, error: str | None = None, attributes: Mapping[str, Any] | None = None) -> None:
        """Close the span; with `error`, as failed (status ERROR, the error as its description)."""


class Tracer(Protocol):
    """Makes the spans of the mesh's hops. `enabled` False: spans record nothing, and
    callers skip building their attributes."""

    enabled: bool

    def start(self, name: str, kind: str, parent: Parent, tracestate: str | None = None,
              attributes: Mapping[str, Any] | None = None) -> Span: ...

    async def close(self) -> None:
        """Send what is still buffered (bounded in time) and stop."""


class NoopSpan:
    """No span: only the context of the next hop (a child of the parent), made when asked."""

    __slots__ = ("_context", "_parent")

    def __init__(self, parent: Parent) -> None:
        self._parent = parent
        self._context: TraceContext | None = None

    @property
    def context(self) -> TraceContext:
        if self._context is None:
            parent = as_context(self._parent)
            self._context = parent.child() if parent is not None else new_context()
        return self._context

    def end(self, error: str | None = None, attributes: Mapping[str, Any] | None = None) -> None:
        pass


class NoopTracer:
    enabled = False

    def start(self, name: str, kind: str, parent: Parent, tracestate: str | None = None,
              attributes: Mapping[str, Any] | None = None) -> Span:
        return NoopSpan(parent)

    async def close(self) -> None:
        pass


NOOP: Tracer = NoopTracer()

HOP: ContextVar[Span | None] = ContextVar("fmesh_hop", default=None)


def as_context(parent: Parent) -> TraceContext | None:
    if isinstance(parent, str):
        try:
            return parse_traceparent(parent)
        except InvalidEvent:
            return None  # stored before the mesh checked it: the hop starts a new trace
    return parent


def event_attributes(event: Event) -> dict[str, Any]:
    """A span's attributes about the event, as OpenTelemetry's CloudEvents conventions name them."""
    attributes = event.attributes
    found = {"cloudevents.event_id": event.id, "cloudevents.event_source": event.source,
             "cloudevents.event_type": event.type, "cloudevents.event_spec_version": attributes.get("specversion")}
    if "subject" in attributes:
        found["cloudevents.event_subject"] = attributes["subject"]
    sender = attributes.get("fmeshsender")
    if sender is not None:
        found["fmesh.sender"] = sender
    return found


# -- where events enter ---------------------------------------------------------------------


def transport_of(headers: Iterable[tuple[bytes, bytes]]) -> Transport | None:
    """The W3C trace context of an instrumented client's request (raw ASGI headers); a
    malformed one is ignored, as the W3C recommendation says."""
    parent = state = None
    for name, value in headers:
        if name == b"traceparent":
            parent = value
        elif name == b"tracestate":
            state = value
    if parent is None:
        return None
    context = as_context(parent.decode("latin-1").strip())
    if context is None:
        return None
    try:
        return context, check_tracestate(state.decode("latin-1")) if state else None
    except InvalidEvent:
        return context, None


def begin_publish(tracer: Tracer, events: Sequence[Event],
                  transport: Transport | None = None) -> list[Span]:
    """Give each event that has no trace context one (a child of `transport`, the request's
    own, if any; else a new trace); with tracing on, a span per event, still open."""
    if not tracer.enabled:
        for event in events:
            if TRACEPARENT in event.attributes:
                continue
            if transport is None:
                event.attributes[TRACEPARENT] = new_traceparent()
            else:
                _adopt(event, transport[0].child(), transport)
        return []
    spans = []
    for event in events:
        attributes = event.attributes
        carried = TRACEPARENT in attributes
        parent = attributes[TRACEPARENT] if carried else transport[0] if transport else None
        state = attributes.get(TRACESTATE) if carried else transport[1] if transport else None
        span = tracer.start(f"publish {event.type}", PRODUCER, parent, state, event_attributes(event))
        if not carried:
            _adopt(event, span.context, transport)
        spans.append(span)
    return spans


def _adopt(event: Event, context: TraceContext, transport: Transport | None) -> None:
    event.attributes[TRACEPARENT] = context.traceparent
    if transport is not None and transport[1] and TRACESTATE not in event.attributes:
        event.attributes[TRACESTATE] = transport[1]


def end_all(spans: Iterable[Span], error: str | None = None) -> None:
    for span in spans:
        span.end(error)


async def publish_traced(publish: Callable[[list[Event]], Awaitable[None]], events: list[Event], tracer: Tracer,
                         transport: Transport | None = None) -> None:
    """`publish(events)`, each event with a trace context (see `begin_publish`), and a span
    per event, ended once the events are stored (or as failed when they are not)."""
    spans = begin_publish(tracer, events, transport)
    try:
        await publish(events)
    except BaseException as exc:
        end_all(spans, describe(exc))
        raise
    end_all(spans)


# -- deliveries and replies -------------------------------------------------------------------


def start_delivery(tracer: Tracer, kind: str, subscription: str, event: Event, attempt: int) -> Span:
    """The span of one delivery attempt, a child of the event's context."""
    parent = event.attributes.get(TRACEPARENT)
    if not tracer.enabled:
        return NoopSpan(parent)
    attributes = event_attributes(event)
    attributes.update({"fmesh.subscription": subscription, "fmesh.attempt": attempt})
    return tracer.start(f"deliver {subscription}", kind, parent, event.attributes.get(TRACESTATE), attributes)


def start_reply(tracer: Tracer, subscription: str, attempt: Span, incoming: Event) -> Span:
    """The span of a reply, a child of the attempt that made it."""
    state = incoming.attributes.get(TRACESTATE)
    if not tracer.enabled:
        return NoopSpan(attempt.context)
    return tracer.start(f"reply {subscription}", PRODUCER, attempt.context, state, {"fmesh.subscription": subscription})


def traced_reply(reply: Event, span: Span, incoming: Event) -> Event:
    """`reply` in the trace of `span`, with the incoming event's `tracestate`, unless the
    handler gave it a context of its own."""
    if TRACEPARENT in reply.attributes:
        return reply
    attributes = {**reply.attributes, TRACEPARENT: span.context.traceparent}
    state = incoming.attributes.get(TRACESTATE)
    if state is not None and TRACESTATE not in attributes:
        attributes[TRACESTATE] = state
    return Event(attributes, reply.payload)


def hop_headers(event: Event | None = None) -> dict[str, str]:
    """The W3C headers of an outgoing request for the current hop: its span's context, or
    (outside a delivery) a child of the event's; none when there is neither."""
    span = HOP.get()
    if span is not None:
        context: TraceContext | None = span.context
    else:
        parent = context_of(event.attributes) if event is not None else None
        context = parent.child() if parent is not None else None
    if context is None:
        return {}
    headers = {TRACEPARENT: context.traceparent}
    state = event.attributes.get(TRACESTATE) if event is not None else None
    if state:
        headers[TRACESTATE] = state
    return headers
