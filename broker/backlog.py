"""Back-pressure: a bound on the deliveries waiting for each subscription.

Without it a mesh that takes events faster than a function handles them stores
without end, and its senders learn of trouble only when the disk is full. With it,
a publish that would route an event to a subscription already holding `limit`
deliveries is refused whole (nothing of it is stored) with `Backlogged`, which the
HTTP edges answer with 503 and `Retry-After`, and triggers with pausing and trying
again: the senders slow down to what the functions keep up with. Events for other
subscriptions still flow, and replies of events already accepted are never refused.

The counts are kept in memory as deliveries come and go through the broker, and set
from the event log at start and now and then (`Broker.resync_backlog`), which also
corrects for deliveries another node of a cluster finished. The bound itself is the
node's setting (`--max-backlog`, 100,000 by default).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from fmesh.errors import Backlogged


class Backlog:
    """Deliveries stored and not yet finished, per subscription, and the bound on them."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit or None   # deliveries waiting per subscription at most (0 or None: no bound)
        self._counts: dict[str, int] = {}
        self.total = 0    # waiting for all subscriptions together

    def waiting(self, subscription: str) -> int:
        return self._counts.get(subscription, 0)

    def admit(self, routed: Iterable[tuple[Any, Sequence[str]]]) -> None:
        """Raise `Backlogged` if any event would go to a subscription at its bound."""
        if self.limit is None:
            return
        counts, limit = self._counts, self.limit
        for _, subscriptions in routed:
            for subscription in subscriptions:
                if counts.get(subscription, 0) >= limit:
                    raise Backlogged(subscription, counts[subscription], limit)

    def added(self, routed: Iterable[tuple[Any, Sequence[str]]]) -> None:
        counts = self._counts
        for _, subscriptions in routed:
            for subscription in subscriptions:
                counts[subscription] = counts.get(subscription, 0) + 1
                self.total += 1

    def finished(self, subscription: str, count: int = 1) -> None:
        self.set(subscription, self._counts.get(subscription, 0) - count)

    def dropped(self, subscription: str) -> None:
        self.set(subscription, 0)

    def set(self, subscription: str, count: int) -> None:
        """What the event log says is stored for `subscription` now."""
        self.total -= self._counts.pop(subscription, 0)
        if count > 0:
            self._counts[subscription] = count
            self.total += count
