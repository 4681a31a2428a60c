"""What the trail stores, and the contract of a store for it.

The hot path only notes (`Accepted`, `Noted`: tuples holding the event's attributes, never
its data, so that what waits to be written stays small); a store turns notes into records
when it writes them, in the trail's own thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from fmesh.events import SENDER
from fmesh.meshpath import PATH

ERROR_CHARS = 500  # of an attempt's error, in a step

Attributes = Mapping[str, Any]   # an event's (fmesh.events.Event.attributes)
# When the broker stored some events, and each event's attributes with the subscriptions it was routed to.
Accepted = tuple[float, Sequence[tuple[Attributes, Sequence[str]]]]
# A step as a sidecar told it: (at, attributes, subscription, kind, attempt, status, seconds, error, due, detail).
Noted = tuple[float, Attributes, str, str, int, int | None, float | None, str | None, float | None, str | None]


class Arrival(NamedTuple):
    """An accepted event and where it was routed (none: it matched nothing)."""

    at: float
    id: str
    source: str
    type: str
    sender: str
    traceparent: str | None
    routed: tuple[str, ...]
    path: str | None = None      # the meshes it was bridged from (`fmeshpath`), oldest first


class Step(NamedTuple):
    """Something that happened to an event in one subscription (a `Steps` kind)."""

    at: float
    id: str
    source: str
    subscription: str
    kind: str
    attempt: int = 0
    status: int | None = None
    duration_ms: float | None = None
    error: str | None = None
    due: float | None = None
    detail: str | None = None


def arrivals_of(accepted: Sequence[Accepted]) -> list[Arrival]:
    return [arrival_of(at, attributes, subscriptions)
            for at, routed in accepted for attributes, subscriptions in routed]


def arrival_of(at: float, attributes: Attributes, subscriptions: Sequence[str]) -> Arrival:
    return Arrival(at, attributes["id"], attributes["source"], attributes["type"], attributes.get(SENDER, ""),
                   attributes.get("traceparent"), tuple(subscriptions), attributes.get(PATH))


def step_of(noted: Noted) -> Step:
    at, attributes, subscription, kind, attempt, status, seconds, error, due, detail = noted
    return Step(at, attributes["id"], attributes["source"], subscription, kind, attempt, status,
                None if seconds is None else round(seconds * 1000, 3),
                None if error is None else error[:ERROR_CHARS], due, detail)


class TrailStore(Protocol):
    """Where the trail is kept. Called from one worker thread at a time, never from the loop."""

    def write(self, accepted: Sequence[Accepted], steps: Sequence[Noted]) -> None: ...

    def arrivals(self, event_id: str) -> list[Arrival]:
        """The events stored with this id (different sources may share one), oldest first."""

    def steps(self, event_id: str) -> list[Step]:
        """What happened to events with this id, in the order it happened."""

    def parents(self, reply_id: str) -> list[Step]:
        """The `reply` steps that produced an event with this id."""

    def recent(self, limit: int, unrouted: bool) -> list[Arrival]:
        """The most recent events (only those that matched nothing, if `unrouted`), newest first."""

    def prune(self, before: float, keep: int) -> None:
        """Forget what is older than `before`, and all but about the newest `keep` events."""

    def close(self) -> None: ...
