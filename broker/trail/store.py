"""What the trail stores, and the contract of a store for it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

ERROR_CHARS = 500  # of an attempt's error, in a step


@dataclass(frozen=True, slots=True)
class Arrival:
    """An accepted event and where it was routed (none: it matched nothing)."""

    at: float
    id: str
    source: str
    type: str
    sender: str
    traceparent: str | None
    routed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Step:
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


class TrailStore(Protocol):
    """Where the trail is kept. Called from one worker thread at a time, never from the loop."""

    def write(self, arrivals: Sequence[Arrival], steps: Sequence[Step]) -> None: ...

    def arrivals(self, event_id: str) -> list[Arrival]:
        """The events stored with this id (different sources may share one), oldest first."""

    def steps(self, event_id: str) -> list[Step]:
        """What happened to events with this id, in the order it happened."""

    def parents(self, reply_id: str) -> list[Step]:
        """The `reply` steps that produced an event with this id."""

    def unrouted(self, limit: int) -> list[Arrival]:
        """The most recent events that matched nothing, newest first."""

    def prune(self, before: float, keep: int) -> None:
        """Forget what is older than `before`, and all but the newest `keep` arrivals (and
        as many steps per arrival as a few retries make)."""

    def close(self) -> None: ...
