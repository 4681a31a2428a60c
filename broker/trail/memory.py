"""The trail kept in memory (a `memory://` mesh, and tests)."""

from __future__ import annotations

from collections.abc import Sequence

from fmesh.broker.trail.store import Accepted, Arrival, Noted, Step, arrivals_of, step_of

STEPS_PER_ARRIVAL = 8   # steps kept per event kept: a few retries, a reply, a replay


class MemoryTrail:
    def __init__(self) -> None:
        self._arrivals: list[Arrival] = []
        self._steps: list[Step] = []

    def write(self, accepted: Sequence[Accepted], steps: Sequence[Noted]) -> None:
        self._arrivals.extend(arrivals_of(accepted))
        self._steps.extend(step_of(noted) for noted in steps)

    def arrivals(self, event_id: str) -> list[Arrival]:
        return [a for a in self._arrivals if a.id == event_id]

    def steps(self, event_id: str) -> list[Step]:
        return [s for s in self._steps if s.id == event_id]

    def parents(self, reply_id: str) -> list[Step]:
        return [s for s in self._steps if s.kind == "reply" and s.detail == reply_id]

    def recent(self, limit: int, unrouted: bool) -> list[Arrival]:
        return [a for a in reversed(self._arrivals) if not (unrouted and a.routed)][:limit]

    def prune(self, before: float, keep: int) -> None:
        self._arrivals = [a for a in self._arrivals if a.at >= before][-keep:] if keep else []
        self._steps = [s for s in self._steps if s.at >= before][-keep * STEPS_PER_ARRIVAL:] if keep else []

    def close(self) -> None:
        pass
