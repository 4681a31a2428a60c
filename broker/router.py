"""Which subscriptions an event goes to, without trying every filter on every event.

Each filter says what an event must have for it to match (its keys: an attribute's
string form equal to, starting with or ending with a value; broker/filter_keys.py), in
every dialect: exact, prefix and suffix on any attribute, `all`/`any` of them, and the
`AND`/`OR`/`=`/`LIKE`/`IN` parts of CESQL. The router files each subscription under one
set of its keys (the one whose buckets are emptiest) and, for an event, looks only in
the buckets its attribute values lead to: a dict lookup per indexed attribute for exact
keys, and for prefixes (suffixes) one lookup per distinct prefix (suffix) length, which
a bounded cache of recent values turns into one lookup (as NATS caches its sublist), so
the cost of an event does not grow with the number of subscriptions. What it finds is still
tested in full, so results are exactly those of trying every filter; only filters with
no key (`not`, CESQL without an indexable conjunct) are tried on every event. A candidate
that is a plain conjunction of keys is tested by checking those (`Filter.conditions`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from fmesh.broker.filter_keys import Alternatives, Key, rank
from fmesh.broker.filters import Filter

Bucket = dict[str, Filter]  # subscription -> filter

# Values of one attribute whose buckets are remembered (once it has affix buckets).
# Attributes that carry affix filters (type, source, subject) take few distinct values,
# so nearly every lookup hits; a flood of distinct values only empties the cache.
CACHE_SIZE = 4096


class _Affixes:
    """Buckets by a prefix (or suffix) of an attribute's text.

    A lookup cuts the event's text once per distinct length present and probes a dict:
    at most as many probes as a character trie would walk, each one in C. (A trie over
    the characters costs a Python step per character of the value instead.)
    """

    __slots__ = ("_counts", "_suffix", "buckets", "lengths")

    def __init__(self, suffix: bool) -> None:
        self.buckets: dict[str, Bucket] = {}
        self.lengths: tuple[int, ...] = ()  # distinct lengths of the affixes, ascending
        self._counts: dict[int, int] = {}  # length -> how many affixes have it
        self._suffix = suffix

    def add(self, affix: str, name: str, filter: Filter) -> None:
        bucket = self.buckets.get(affix)
        if bucket is None:
            bucket = self.buckets[affix] = {}
            self._count(len(affix), 1)
        bucket[name] = filter

    def discard(self, affix: str, name: str) -> None:
        bucket = self.buckets.get(affix)
        if bucket is not None and bucket.pop(name, None) is not None and not bucket:
            del self.buckets[affix]
            self._count(len(affix), -1)

    def _count(self, length: int, change: int) -> None:
        count = self._counts.get(length, 0) + change
        if count:
            self._counts[length] = count
        else:
            del self._counts[length]
        self.lengths = tuple(sorted(self._counts))

    def find(self, text: str, found: list[Bucket]) -> None:
        size, buckets = len(text), self.buckets
        for length in self.lengths:
            if length > size:
                break
            bucket = buckets.get(text[size - length:] if self._suffix else text[:length])
            if bucket:
                found.append(bucket)


class _AttributeIndex:
    """The buckets of one attribute: by its exact text, by prefix and by suffix."""

    __slots__ = ("_cache", "affixed", "exact", "prefixes", "suffixes")

    def __init__(self) -> None:
        self.exact: dict[str, Bucket] = {}
        self.prefixes = _Affixes(suffix=False)
        self.suffixes = _Affixes(suffix=True)
        self.affixed = False  # any prefix or suffix buckets (most attributes have none)
        # text -> the buckets it leads to, while affixed; emptied whenever the index changes
        self._cache: dict[str, tuple[Bucket, ...]] = {}

    def buckets(self, kind: str) -> dict[str, Bucket]:
        return self.exact if kind == "exact" else self._affixes(kind).buckets

    def _affixes(self, kind: str) -> _Affixes:
        return self.prefixes if kind == "prefix" else self.suffixes

    def add(self, key: Key, name: str, filter: Filter) -> None:
        self._cache.clear()
        if key.kind == "exact":
            self.exact.setdefault(key.value, {})[name] = filter
        else:
            self._affixes(key.kind).add(key.value, name, filter)
            self.affixed = True

    def discard(self, key: Key, name: str) -> None:
        self._cache.clear()
        if key.kind != "exact":
            self._affixes(key.kind).discard(key.value, name)
            self.affixed = bool(self.prefixes.buckets or self.suffixes.buckets)
            return
        bucket = self.exact.get(key.value)
        if bucket is not None and bucket.pop(name, None) is not None and not bucket:
            del self.exact[key.value]

    def is_empty(self) -> bool:
        return not (self.exact or self.prefixes.buckets or self.suffixes.buckets)

    def buckets_for(self, text: str) -> tuple[Bucket, ...]:
        """Every bucket this text leads to (exact, prefix, suffix), remembered: for an
        attribute with affix buckets, one dict lookup instead of one per affix length."""
        cache = self._cache
        buckets = cache.get(text)
        if buckets is None:
            exact = self.exact.get(text)
            found: list[Bucket] = [exact] if exact else []
            self.prefixes.find(text, found)
            self.suffixes.find(text, found)
            if len(cache) >= CACHE_SIZE:
                cache.clear()
            buckets = cache[text] = tuple(found)
        return buckets

    def everything(self) -> Iterator[Bucket]:
        yield from self.exact.values()
        yield from self.prefixes.buckets.values()
        yield from self.suffixes.buckets.values()


def _plain_text(value: Any) -> str | None:
    """The text both `attribute_text` and CESQL compare, for the types where they agree
    (all that an ingress lets in); None for others, whose buckets are all searched."""
    kind = type(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    return None


def passes(filter: Filter, attributes: Mapping[str, Any]) -> bool:
    """The filter's answer: from its conditions while the attributes they name are strings
    (most are), else from its own test, which also records a CESQL filter's errors. The
    conditions are in the filter's own order, so a condition that fails first fails where
    the filter's test would have stopped too."""
    conditions = filter.conditions
    if conditions is None:
        return filter.test(attributes)
    for attribute, kind, value in conditions:
        text = attributes.get(attribute)
        if type(text) is not str:
            return filter.test(attributes)
        if kind == "exact":
            if text != value:
                return False
        elif not (text.startswith(value) if kind == "prefix" else text.endswith(value)):
            return False
    return True


class Router:
    def __init__(self) -> None:
        self._filters: dict[str, Filter] = {}
        self._placed: dict[str, Alternatives] = {}  # the keys each indexed subscription is filed under
        self._unindexed: Bucket = {}
        self._attributes: dict[str, _AttributeIndex] = {}

    def __contains__(self, subscription: str) -> bool:
        return subscription in self._filters

    def filter(self, subscription: str) -> Filter | None:
        return self._filters.get(subscription)

    def set(self, subscription: str, filter: Filter) -> None:
        """Add a subscription, or replace its filter."""
        self.remove(subscription)
        self._filters[subscription] = filter
        if not filter.keys:
            self._unindexed[subscription] = filter
            return
        chosen = min(filter.keys, key=lambda alternatives: (self._load(alternatives), rank(alternatives)))
        self._placed[subscription] = chosen  # () when the filter can match no event: filed nowhere
        for key in chosen:
            self._attributes.setdefault(key.attribute, _AttributeIndex()).add(key, subscription, filter)

    def _load(self, alternatives: Alternatives) -> int:
        """How many subscriptions share the buckets these keys would go into."""
        total = 0
        for key in alternatives:
            index = self._attributes.get(key.attribute)
            total += len(index.buckets(key.kind).get(key.value, ())) if index else 0
        return total

    def remove(self, subscription: str) -> None:
        if self._filters.pop(subscription, None) is None:
            return
        self._unindexed.pop(subscription, None)
        for key in self._placed.pop(subscription, ()):
            index = self._attributes[key.attribute]
            index.discard(key, subscription)
            if index.is_empty():
                del self._attributes[key.attribute]

    def match(self, attributes: Mapping[str, Any]) -> list[str]:
        """Names of the subscriptions whose filter passes, in no particular order."""
        found: Bucket | None = None  # the candidates: the one bucket found, or several merged
        for attribute, index in self._attributes.items():  # inline, as this runs for every event
            value = attributes.get(attribute)
            if value is None:
                continue
            text = value if type(value) is str else _plain_text(value)
            if text is None:
                buckets = index.everything()
            elif index.affixed:
                buckets = index.buckets_for(text)
            else:  # exact keys only: one lookup, nothing to remember
                bucket = index.exact.get(text)
                if bucket:
                    found = bucket if found is None else {**found, **bucket}
                continue
            for bucket in buckets:  # a filter filed under several keys may be in more than one
                found = bucket if found is None else {**found, **bucket}
        matched = [name for name, f in found.items() if passes(f, attributes)] if found else []
        if self._unindexed:
            matched.extend(name for name, f in self._unindexed.items() if f.test(attributes))
        return matched
