"""Counts of what happened to events: the totals `fmesh status` and /metrics show.

An `Observer` on the hot path (the ingress takes ~15k events/s), so an event costs a dict
increment or two and nothing more. The counts outlive any one sidecar (a redeploy starts a
new one) and go into the state store (see `deploy.counters`), so a restart keeps them too.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from collections.abc import Sequence
from typing import Any

from fmesh.contracts import Steps
from fmesh.events import SENDER, Event
from fmesh.meshpath import PATH

# Upper bounds (seconds) of the histograms' buckets, Prometheus style (a last +Inf bucket too).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
COLD_START_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RECENT = 512          # attempt durations kept per subscription for its p50 and p99
COUNTERS = ("delivered", "failed", "retried", "dead_lettered", "redirected", "replies", "replayed")
BRIDGED = ("received", "duplicates", "looped")
VERSION = 1


class Histogram:
    """Observations counted into fixed buckets, with their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1   # the first bucket whose bound is >= value
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or below it), as Prometheus exposes buckets."""
        total, out = 0, []
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == math.inf else repr(bound), total))
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"bounds": list(self.bounds), "counts": self.counts, "sum": self.sum}

    def restore(self, saved: Any) -> None:
        """Add a snapshot's counts; one kept with other buckets is left out (the buckets changed)."""
        if not isinstance(saved, dict) or saved.get("bounds") != list(self.bounds):
            return
        counts, total = saved.get("counts"), saved.get("sum")
        if not (isinstance(counts, list) and len(counts) == len(self.counts) and all(_count(c) for c in counts)
                and isinstance(total, int | float) and not isinstance(total, bool)):
            raise ValueError("a histogram's counts are not a list of counts")
        self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]
        self.sum += float(total)


class Counts:
    """What the attempts of one subscription came to."""

    __slots__ = (*COUNTERS, "latency", "recent")

    def __init__(self) -> None:
        for name in COUNTERS:
            setattr(self, name, 0)
        self.latency = Histogram(LATENCY_BUCKETS)   # seconds per attempt
        self.recent: deque[float] = deque(maxlen=RECENT)

    def latency_ms(self) -> dict[str, float] | None:
        """The p50 and p99 of the recent attempts, in milliseconds (None before the first)."""
        if not self.recent:
            return None
        ordered = sorted(self.recent)
        return {"p50": _rank(ordered, 0.5), "p99": _rank(ordered, 0.99)}

    def snapshot(self) -> dict[str, Any]:
        return {**{name: getattr(self, name) for name in COUNTERS}, "latency": self.latency.snapshot()}

    def restore(self, saved: Any) -> None:
        if not isinstance(saved, dict):
            raise ValueError("a subscription's counts are not an object")
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + _checked(saved.get(name, 0), name))
        self.latency.restore(saved.get("latency"))


class Tallies:
    """Events in per sender, unrouted events, bridged-in events, per subscription what its
    attempts came to, and cold starts per function. `changes` grows with every count."""

    def __init__(self) -> None:
        self.events_in: dict[str, int] = {}   # by sender: a principal, trigger:x, function:x, peer:x
        self.unrouted = 0
        self.bridged = dict.fromkeys(BRIDGED, 0)
        self.subscriptions: dict[str, Counts] = {}
        self.cold_starts: dict[str, Histogram] = {}
        self.changes = 0

    # -- Observer ------------------------------------------------------------------------

    def accepted(self, routed: Sequence[tuple[Event, Sequence[str]]]) -> None:
        events_in = self.events_in
        for event, subscriptions in routed:
            attributes = event.attributes
            sender = attributes.get(SENDER, "")
            events_in[sender] = events_in.get(sender, 0) + 1
            if not subscriptions:
                self.unrouted += 1
            if PATH in attributes:
                self.bridged["received"] += 1
        self.changes += 1

    def step(self, event: Event, subscription: str, kind: str, attempt: int = 0, status: int | None = None,
             duration: float | None = None, error: str | None = None, due: float | None = None,
             detail: str | None = None) -> None:
        self.changes += 1
        if not subscription:   # the broker's word on a bridged event it dropped
            self._dropped(kind)
            return
        counts = self.subscriptions.get(subscription) or self.of(subscription)
        if duration is not None:   # Histogram.observe, inlined: this runs for every attempt
            latency = counts.latency
            latency.counts[bisect_left(latency.bounds, duration)] += 1
            latency.sum += duration
            counts.recent.append(duration)
        if kind == Steps.DELIVERED:
            counts.delivered += 1
        elif kind == Steps.RETRYING:
            counts.failed += 1
            counts.retried += 1
        elif kind == Steps.DEAD_LETTERED:
            counts.dead_lettered += 1
            counts.failed += attempt > 0   # attempt 0: a reply over the hop limit, no attempt failed
        elif kind == Steps.REDIRECTED:
            counts.redirected += 1
            counts.failed += 1
        elif kind == Steps.REPLY:
            counts.replies += error is None   # with an error: a reply dead-lettered, not published
        elif kind == Steps.REPLAYED:
            counts.replayed += 1

    def _dropped(self, kind: str) -> None:
        if kind == Steps.DUPLICATE:
            self.bridged["received"] += 1   # it arrived, and was not stored again
            self.bridged["duplicates"] += 1
        elif kind == Steps.LOOPED:
            self.bridged["looped"] += 1

    def cold_start(self, function: str, seconds: float) -> None:
        histogram = self.cold_starts.get(function)
        if histogram is None:
            histogram = self.cold_starts[function] = Histogram(COLD_START_BUCKETS)
        histogram.observe(seconds)
        self.changes += 1

    # -- reading -------------------------------------------------------------------------

    def of(self, subscription: str) -> Counts:
        """The counts of a subscription (zero until something happens to it)."""
        counts = self.subscriptions.get(subscription)
        if counts is None:
            counts = self.subscriptions[subscription] = Counts()
        return counts

    def forget(self, subscription: str) -> None:
        """A deleted subscription's counts go (one made again later counts from zero)."""
        if self.subscriptions.pop(subscription, None) is not None:
            self.changes += 1
        if subscription.startswith("function:"):
            self.cold_starts.pop(subscription.split(":", 1)[1], None)

    # -- keeping -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {"version": VERSION, "events_in": dict(self.events_in), "unrouted": self.unrouted,
                "bridged_in": dict(self.bridged),
                "subscriptions": {name: c.snapshot() for name, c in self.subscriptions.items()},
                "cold_starts": {name: h.snapshot() for name, h in self.cold_starts.items()}}

    def restore(self, saved: Any) -> None:
        """Add the counts of a snapshot; ValueError (and nothing added) if it is not one."""
        if not isinstance(saved, dict) or saved.get("version") != VERSION:
            raise ValueError(f"not a version {VERSION} snapshot of counts")
        staged = Tallies()   # checked whole before any of it counts
        staged._restore(saved)
        self._add(staged)

    def _restore(self, saved: dict[str, Any]) -> None:
        self.unrouted = _checked(saved.get("unrouted", 0), "unrouted")
        for name, value in _mapping(saved, "events_in").items():
            self.events_in[name] = _checked(value, f"events_in.{name}")
        for name, value in _mapping(saved, "bridged_in").items():
            if name in self.bridged:
                self.bridged[name] = _checked(value, f"bridged_in.{name}")
        for name, value in _mapping(saved, "subscriptions").items():
            self.of(name).restore(value)
        for name, value in _mapping(saved, "cold_starts").items():
            self.cold_starts[name] = Histogram(COLD_START_BUCKETS)
            self.cold_starts[name].restore(value)

    def _add(self, other: Tallies) -> None:
        self.unrouted += other.unrouted
        for name, value in other.events_in.items():
            self.events_in[name] = self.events_in.get(name, 0) + value
        for name, value in other.bridged.items():
            self.bridged[name] += value
        for name, counts in other.subscriptions.items():
            self.of(name).restore(counts.snapshot())
        for name, histogram in other.cold_starts.items():
            self.cold_starts.setdefault(name, Histogram(COLD_START_BUCKETS)).restore(histogram.snapshot())
        self.changes += 1


def _rank(ordered: list[float], quantile: float) -> float:
    """The nearest-rank quantile of sorted seconds, in milliseconds."""
    index = min(len(ordered) - 1, max(0, math.ceil(quantile * len(ordered)) - 1))
    return round(ordered[index] * 1000, 3)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _checked(value: Any, name: str) -> int:
    if not _count(value):
        raise ValueError(f"{name} is {value!r}, not a count")
    return value


def _mapping(saved: dict[str, Any], name: str) -> dict[str, Any]:
    value = saved.get(name, {})
    if not isinstance(value, dict):
        raise ValueError(f"{name} is not an object")
    return value
