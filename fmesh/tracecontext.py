"""W3C Trace Context, as the CloudEvents distributed-tracing extension carries it.

An event's `traceparent` (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`) and
`tracestate` (`key=value` list members, comma-separated) say which trace it belongs to.
The mesh checks them where events enter (400 naming the attribute), makes a new
context for an event that comes without one, and a child (same trace id, new parent
id) for each hop. New ids come from `random.getrandbits`, as OpenTelemetry's id generator
does: they need to be unique, not secret, and `os.urandom` lets go of the GIL on the
event loop's thread at every event, which the trail's thread then holds for a while.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from random import getrandbits
from typing import Any

from fmesh.errors import InvalidEvent

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

MAX_TRACESTATE_MEMBERS = 32
MAX_TRACESTATE_CHARS = 512

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_VERSION_00 = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_ZERO_TRACE, _ZERO_PARENT = "0" * 32, "0" * 16
# A list member: a simple key or tenant@system, then a value of printable ASCII without `,` and `=`
# that does not end in a space (W3C Trace Context, section 3.3.1).
_KEY = r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
_MEMBER = re.compile(rf"({_KEY})=([\x20-\x2b\x2d-\x3c\x3e-\x7e]{{0,255}}[\x21-\x2b\x2d-\x3c\x3e-\x7e])")

TRACEPARENT_FORM = ("00-<32 lowercase hex trace id, not all zeros>-<16 lowercase hex parent id, not all zeros>-"
                    "<2 hex flags>, e.g. 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
TRACESTATE_FORM = (f"at most {MAX_TRACESTATE_MEMBERS} comma-separated key=value members with unique keys, "
                   f"{MAX_TRACESTATE_CHARS} characters at most, e.g. congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")


@dataclass(frozen=True, slots=True)
class TraceContext:
    """One span's place in a trace: what a `traceparent` says."""

    trace_id: str        # 32 lowercase hex digits
    span_id: str         # 16 lowercase hex digits: the parent id of whatever comes next
    flags: str = "01"    # 2 hex digits; bit 0 is "sampled"

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    @property
    def sampled(self) -> bool:
        return bool(int(self.flags, 16) & 1)

    def child(self) -> TraceContext:
        """The context of the next hop: the same trace, a new parent id."""
        return TraceContext(self.trace_id, new_span_id(), self.flags)


def new_span_id() -> str:
    span_id = f"{getrandbits(64):016x}"
    return span_id if span_id != _ZERO_PARENT else "0" * 15 + "1"


def new_context() -> TraceContext:
    """The context of a new trace (sampled)."""
    ids = f"{getrandbits(192):048x}"
    trace_id, span_id = ids[:32], ids[32:]
    if trace_id == _ZERO_TRACE or span_id == _ZERO_PARENT:  # one chance in 2**64: draw again
        return new_context()
    return TraceContext(trace_id, span_id)


def new_traceparent() -> str:
    """`new_context().traceparent`, made the short way: the ingress does it for every event."""
    ids = f"{getrandbits(192):048x}"
    if ids[:32] == _ZERO_TRACE or ids[32:] == _ZERO_PARENT:
        return new_traceparent()
    return f"00-{ids[:32]}-{ids[32:]}-01"


def parse_traceparent(value: Any) -> TraceContext:
    """The context a `traceparent` value gives; InvalidEvent naming `traceparent` otherwise.

    Version 00 is read exactly; a later version (not ff) is read by its first four fields,
    as the W3C recommendation says, so that a newer sender is not refused."""
    if not isinstance(value, str):
        raise _invalid_traceparent(value)
    match = _TRACEPARENT.match(value)
    if match is None:
        raise _invalid_traceparent(value)
    version, trace_id, span_id, flags = match.groups()
    exact = len(value) == 55
    if version == "ff" or (version == "00" and not exact) or (not exact and value[55] != "-"):
        raise _invalid_traceparent(value)
    if trace_id == _ZERO_TRACE or span_id == _ZERO_PARENT:
        raise _invalid_traceparent(value)
    return TraceContext(trace_id, span_id, flags)


def _invalid_traceparent(value: Any) -> InvalidEvent:
    return InvalidEvent(f"attribute {TRACEPARENT!r} is not a W3C traceparent: got {value!r:.80}; expected "
                        f"{TRACEPARENT_FORM}", TRACEPARENT)


def check_tracestate(value: Any) -> str:
    """`value` once it is a W3C `tracestate`; InvalidEvent naming `tracestate` otherwise."""
    if not isinstance(value, str) or len(value) > MAX_TRACESTATE_CHARS:
        raise _invalid_tracestate(value, "")
    members = [member.strip(" \t") for member in value.split(",")]
    members = [member for member in members if member]  # empty members are allowed, and mean nothing
    if len(members) > MAX_TRACESTATE_MEMBERS:
        raise _invalid_tracestate(value, f" ({len(members)} members)")
    keys = set()
    for member in members:
        match = _MEMBER.fullmatch(member)
        if match is None:
            raise _invalid_tracestate(value, f" (member {member!r:.60})")
        if match[1] in keys:
            raise _invalid_tracestate(value, f" (key {match[1]!r:.60} twice)")
        keys.add(match[1])
    return value


def _invalid_tracestate(value: Any, where: str) -> InvalidEvent:
    return InvalidEvent(f"attribute {TRACESTATE!r} is not a W3C tracestate{where}: got {value!r:.80}; expected "
                        f"{TRACESTATE_FORM}", TRACESTATE)


def check_traceparent(value: Any) -> None:
    """`parse_traceparent`, without building the context for the usual case (version 00)."""
    if (isinstance(value, str) and len(value) == 55 and _VERSION_00.fullmatch(value)
            and value[3:35] != _ZERO_TRACE and value[36:52] != _ZERO_PARENT):
        return
    parse_traceparent(value)  # a later version, or the error saying what is wrong


def check_trace_attributes(attributes: Mapping[str, Any]) -> None:
    """Refuse a malformed `traceparent` or `tracestate` (InvalidEvent naming it)."""
    if TRACEPARENT in attributes:
        check_traceparent(attributes[TRACEPARENT])
    if TRACESTATE in attributes:
        check_tracestate(attributes[TRACESTATE])


def context_of(attributes: Mapping[str, Any]) -> TraceContext | None:
    """The trace context an event carries, None when it has none (or, stored before the
    mesh checked them, a malformed one)."""
    value = attributes.get(TRACEPARENT)
    if value is None:
        return None
    try:
        return parse_traceparent(value)
    except InvalidEvent:
        return None



def message_context(headers: Mapping[str, str | bytes]) -> dict[str, str]:
    """The W3C `traceparent` and `tracestate` headers of a message that is not a CloudEvent
    (an instrumented Kafka or NATS producer's), as the attributes of the event wrapping it:
    the producer's context is where the message began. A malformed one is ignored."""
    found = {}
    for name in (TRACEPARENT, TRACESTATE):
        value = next((v for k, v in headers.items() if k.lower() == name), None)
        if value is not None:
            found[name] = value.decode("latin-1") if isinstance(value, bytes) else value
    try:
        check_traceparent(found.get(TRACEPARENT))
    except InvalidEvent:
        return {}
    try:
        check_tracestate(found.get(TRACESTATE, ""))
    except InvalidEvent:
        del found[TRACESTATE]
    return found
