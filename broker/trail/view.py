"""What is stored, as the path of one event: the answer of `fmesh trace` and `/v1/trail`."""

from __future__ import annotations

from typing import Any

from fmesh.broker.trail.store import Arrival, Step, TrailStore

from fmesh.contracts import Steps
from fmesh.events import MAX_HOPS

MAX_DEPTH = MAX_HOPS + 1   # replies of replies shown: a whole loop of replies, and the one dead-lettered

OUTCOMES = {Steps.DELIVERED: "delivered", Steps.RETRYING: "retrying", Steps.DEAD_LETTERED: "dead-lettered",
            Steps.REDIRECTED: "redirected", Steps.REPLAYED: "pending", Steps.NOT_SENT: "not sent"}


class Trace:
    def __init__(self, store: TrailStore) -> None:
        self.store = store

    def of(self, event_id: str, sender: str | None = None, depth: int = 0) -> list[dict[str, Any]]:
        """Every stored event with this id (sent by `sender`, when given), each with its steps,
        outcome per subscription, and the replies it produced, nested."""
        stored = self.store.arrivals(event_id)
        arrivals = [a for a in stored if sender is None or a.sender == sender]
        steps = self.store.steps(event_id)
        if not stored:   # never stored (a reply dropped as looped or over the hop limit), or pruned
            return [self._entry(None, event_id, steps, depth)] if steps else []
        return [self._entry(arrival, event_id, [s for s in steps if _belongs(s, arrival, arrivals)], depth)
                for arrival in arrivals]

    def _entry(self, arrival: Arrival | None, event_id: str, steps: list[Step], depth: int) -> dict[str, Any]:
        if arrival:
            entry = arrival_json(arrival)
            entry["parent"] = self._parent(arrival)
        else:
            entry = {"id": event_id, "source": steps[0].source, "type": None, "at": None, "sender": None,
                     "traceparent": None, "routed": [], "path": None, "parent": self._parent_of_unstored(event_id)}
        # A reply whose parent is in the trail but which has no arrival was never stored: the trail
        # is pruned oldest first, so a reply's arrival outlives its parent's `reply` step.
        entry["stored"] = True if arrival else (False if entry["parent"] else None)
        entry["steps"] = [step_json(s) for s in steps]
        entry["outcome"] = outcomes(entry["routed"], steps)
        entry["replies"] = [reply for s in steps if s.kind == Steps.REPLY and s.detail and depth < MAX_DEPTH
                            for reply in self.of(s.detail, s.subscription, depth + 1)]
        return entry

    def _parent(self, arrival: Arrival) -> dict[str, str] | None:
        for step in self.store.parents(arrival.id):
            if step.subscription == arrival.sender:
                return {"id": step.id, "source": step.source}
        return None

    def _parent_of_unstored(self, event_id: str) -> dict[str, str] | None:
        """The event that produced this reply, which the mesh did not store (so its sender is unknown)."""
        parents = self.store.parents(event_id)
        return {"id": parents[-1].id, "source": parents[-1].source} if parents else None


def _belongs(step: Step, arrival: Arrival, arrivals: list[Arrival]) -> bool:
    """A step belongs to the latest arrival of its event before it (a producer may send an
    event twice; each arrival is routed and delivered on its own)."""
    same = [a for a in arrivals if a.source == step.source]
    if arrival not in same:
        return False
    earlier = [a for a in same if a.at <= step.at]
    return (earlier[-1] if earlier else same[0]) is arrival


def outcomes(routed: list[str], steps: list[Step]) -> dict[str, str]:
    """Where the event stands in each subscription it went to: its last step there."""
    result = {name: "pending" for name in routed}
    for step in steps:
        if step.kind in OUTCOMES:
            result[step.subscription] = OUTCOMES[step.kind]
    return result


def arrival_json(arrival: Arrival) -> dict[str, Any]:
    entry = arrival._asdict()
    entry["routed"] = list(arrival.routed)
    return entry


def step_json(step: Step) -> dict[str, Any]:
    entry = step._asdict()
    del entry["id"], entry["source"]
    return entry


def recent_view(store: TrailStore, limit: int, unrouted: bool) -> list[dict[str, Any]]:
    return [arrival_json(a) for a in store.recent(limit, unrouted)]
