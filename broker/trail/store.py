"""What the trail stores, and the contract of a store for it.

The hot path only notes (`Accepted`, `Noted`: tuples holding the event itself); a store
turns notes into records when it writes them, in the trail's own thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from fmesh.events import SENDER, Event
from fmesh.meshpath import PATH

ERROR_CHARS = 500  # of an attempt's error, in a step

# When the broker stored some events, and each with the subscriptions it was routed to.
Accepted = tuple[float, Sequence[tuple[Event, Sequence[str]]]]
# A step as a sidecar told it: (at, event, subscription, kind, attempt, status, seconds, error, due, detail).
Noted = tuple[float, Event, str, str, int, int | None, float | None, str | None, float | None, str | None]


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
    return [arrival_of(at, event, subscriptions) for at, routed in accepted for event, subscriptions in routed]


def arrival_of(at: float, event: Event, subscriptions: Sequence[str]) -> Arrival:
    attributes = event.attributes
    return Arrival(at, event.id, event.source, event.type, attributes.get(SENDER, ""),
                   attributes.get("traceparent"), tuple(subscriptions), attributes.get(PATH))


def step_of(noted: Noted) -> Step:
    at, event, subscription, kind, attempt, status, seconds, error, due, detail = noted
    return Step(at, event.id, event.source, subscription, kind, attempt, status,
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
