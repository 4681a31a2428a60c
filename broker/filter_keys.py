"""What an event must have for a filter to match it, in terms the router can look up.

A `Key` is a condition on one attribute's string form (`exact`, `prefix` or `suffix`);
an absent attribute satisfies none. `Alternatives` are keys at least one of which every
event the filter matches satisfies (none: the filter matches no event). A filter's
`Keys` list the alternatives the router may index it by, any one of them: `all` offers
each of its parts', `any` the union of one alternative per branch, `not` none.

Keys are necessary conditions: a key may be loose but must never exclude a match. A
filter that is exactly a conjunction of keys also has `Conditions` (`cesql_conditions`
in broker/cesql/keys.py, the attribute dialects in broker/filters.py), which the router checks in place of
the filter's own test.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

KINDS = ("exact", "prefix", "suffix")


class Key(NamedTuple):
    attribute: str
    kind: str  # one of KINDS
    value: str


Alternatives = tuple[Key, ...]
Keys = tuple[Alternatives, ...]
Conditions = tuple[Key, ...]  # all must hold

UNINDEXABLE: Keys = ()
NEVER: Keys = ((),)  # an `any` of nothing: no event can match


def rank(alternatives: Alternatives) -> tuple[int, int, int, int]:
    """Which alternatives make the better index, smallest first: few keys, on `type`
    (the attribute events are most often told apart by), exact before prefix before
    suffix, long values before short."""
    if not alternatives:
        return (0, 0, 0, 0)
    return (len(alternatives), max(key.attribute != "type" for key in alternatives),
            max(KINDS.index(key.kind) for key in alternatives), -min(len(key.value) for key in alternatives))


def all_keys(parts: list[Keys]) -> Keys:
    """Every part must match, so each part's alternatives are a way to index the whole."""
    return tuple(dict.fromkeys(alternatives for keys in parts for alternatives in keys))


def any_keys(branches: list[Keys]) -> Keys:
    """One branch must match: indexable only when every branch is."""
    if len(branches) <= 1:
        return branches[0] if branches else NEVER
    if any(not keys for keys in branches):
        return UNINDEXABLE
    best = (min(keys, key=rank) for keys in branches)
    return (tuple(dict.fromkeys(key for alternatives in best for key in alternatives)),)


def joined_conditions(parts: Iterable[Conditions | None]) -> Conditions | None:
    """The conditions of a conjunction: every part's, in order and once each, if every part
    has them (None as soon as one has none)."""
    joined: list[Key] = []
    for conditions in parts:
        if conditions is None:
            return None
        joined += conditions
    return tuple(dict.fromkeys(joined))
