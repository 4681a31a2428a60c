"""Which subscriptions an event goes to, without trying every filter on every event.

Filters that can only match known event types are indexed under those types; the rest
are tried on every event. Publish cost therefore grows with the subscriptions that
could match an event's type, not with all subscriptions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fmesh.broker.filters import Filter


class Router:
    def __init__(self) -> None:
        self._filters: dict[str, Filter] = {}
        self._by_type: dict[str, dict[str, Filter]] = {}
        self._unindexed: dict[str, Filter] = {}

    def __contains__(self, subscription: str) -> bool:
        return subscription in self._filters

    def filter(self, subscription: str) -> Filter | None:
        return self._filters.get(subscription)

    def set(self, subscription: str, filter: Filter) -> None:
        """Add a subscription, or replace its filter."""
        self.remove(subscription)
        self._filters[subscription] = filter
        if filter.types is None:
            self._unindexed[subscription] = filter
            return
        for event_type in filter.types:
            self._by_type.setdefault(event_type, {})[subscription] = filter

    def remove(self, subscription: str) -> None:
        old = self._filters.pop(subscription, None)
        if old is None:
            return
        self._unindexed.pop(subscription, None)
        for event_type in old.types or ():
            bucket = self._by_type.get(event_type, {})
            bucket.pop(subscription, None)
            if not bucket:
                self._by_type.pop(event_type, None)

    def match(self, attributes: Mapping[str, Any]) -> list[str]:
        """Names of the subscriptions whose filter passes, in no particular order."""
        matched = [name for name, f in self._unindexed.items() if f.test(attributes)]
        bucket = self._by_type.get(attributes.get("type"))  # type: ignore[arg-type]
        if bucket:
            matched.extend(name for name, f in bucket.items() if f.test(attributes))
        return matched
