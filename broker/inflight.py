"""Which deliveries of the SQLite log are claimed, kept in memory rather than in the file.

A claim lasts as long as the process that made it (a new process starts with none), so
writing it to the database bought nothing a crash could use, and it cost a transaction
and two WAL pages per event, and a release another. Kept here, a claim is a set entry.

The log changes it from inside its operations, which run in a transaction that can roll
back; each change is journaled until the transaction's end, and undone with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Set


class InFlight:
    """The claimed delivery ids, by subscription; changes are undone by `rollback`."""

    def __init__(self) -> None:
        self._by_subscription: dict[str, set[int]] = {}
        self._subscription_of: dict[int, str] = {}
        self._journal: list[tuple[bool, int, str]] = []  # (taken, id, subscription), since the last commit

    def of(self, subscription: str) -> Set[int]:
        """The ids of `subscription` claimed now (do not change it)."""
        return self._by_subscription.get(subscription, _NONE)

    def take(self, subscription: str, ids: Iterable[int]) -> None:
        taken = self._by_subscription.setdefault(subscription, set())
        for delivery_id in ids:
            taken.add(delivery_id)
            self._subscription_of[delivery_id] = subscription
            self._journal.append((True, delivery_id, subscription))

    def subscriptions(self, ids: Iterable[int]) -> set[str]:
        """The subscriptions that claimed any of `ids`."""
        subscription_of = self._subscription_of
        return {subscription_of[i] for i in ids if i in subscription_of}

    def drop(self, ids: Iterable[int]) -> None:
        """No longer claimed (acked, released, retried, dead-lettered, moved); unknown ids are
        ignored (a late ack of a delivery claimed by an earlier process)."""
        for delivery_id in ids:
            subscription = self._subscription_of.pop(delivery_id, None)
            if subscription is not None:
                self._remove(subscription, delivery_id)
                self._journal.append((False, delivery_id, subscription))

    def drop_subscription(self, subscription: str) -> None:
        self.drop(list(self.of(subscription)))

    def commit(self) -> None:
        self._journal.clear()

    def rollback(self) -> None:
        for taken, delivery_id, subscription in reversed(self._journal):
            if taken:
                self._subscription_of.pop(delivery_id, None)
                self._remove(subscription, delivery_id)
            else:
                self._subscription_of[delivery_id] = subscription
                self._by_subscription.setdefault(subscription, set()).add(delivery_id)
        self._journal.clear()

    def _remove(self, subscription: str, delivery_id: int) -> None:
        taken = self._by_subscription[subscription]
        taken.discard(delivery_id)
        if not taken:
            del self._by_subscription[subscription]

    def __len__(self) -> int:
        return len(self._subscription_of)


_NONE: frozenset[int] = frozenset()
