"""What an event must have for a filter to match it, in terms the router can look up.

A `Key` is a condition on one attribute's string form (`exact`, `prefix` or `suffix`);
an absent attribute satisfies none. `Alternatives` are keys at least one of which every
event the filter matches satisfies (none: the filter matches no event). A filter's
`Keys` list the alternatives the router may index it by, any one of them: `all` offers
each of its parts', `any` the union of one alternative per branch, `not` none.

Keys are necessary conditions: a key may be loose but must never exclude a match. A
filter that is exactly a conjunction of keys also has `Conditions` (`cesql_conditions`
here, the attribute dialects in broker/filters.py), which the router checks in place of
the filter's own test.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from fmesh.broker.cesql.casting import CesqlType, implicit_cast, to_string
from fmesh.broker.cesql.like import literal_affixes, simple_shape
from fmesh.broker.cesql.nodes import Binary, Identifier, In, Like, Literal, Logical, Node

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


# -- CESQL ----------------------------------------------------------------------------------
# A CESQL filter matches only when its expression evaluates to true without an error, and
# reading an absent attribute is an error, so each shape below implies its key. Only shapes
# whose value is compared as the attribute's string form are described: `type = 'x'` casts
# the attribute to String (an integer 5 is '5', a boolean 'true'), as `attribute_text` does.


def cesql_keys(node: Node) -> Keys:
    if isinstance(node, Logical):
        parts = [cesql_keys(operand) for operand in node.operands]
        return all_keys(parts) if node.operator == "AND" else any_keys(parts)
    if isinstance(node, Binary) and node.operator == "=" and _is_string(node.right):
        return _on_attribute(node.left, "exact", node.right.value)  # type: ignore[attr-defined]
    if isinstance(node, Like) and not node.negated:
        return _like_keys(node)
    if isinstance(node, In) and not node.negated:
        return _in_keys(node)
    return UNINDEXABLE


def _is_string(node: Node) -> bool:
    return isinstance(node, Literal) and type(node.value) is str


def _on_attribute(operand: Node, kind: str, value: str) -> Keys:
    if not isinstance(operand, Identifier):
        return UNINDEXABLE
    return ((Key(operand.name, kind, value),),)


def _like_keys(node: Like) -> Keys:
    whole, prefix, suffix = literal_affixes(node.pattern)
    if whole is not None:
        return _on_attribute(node.operand, "exact", whole)
    return all_keys([_on_attribute(node.operand, kind, text)
                     for kind, text in (("prefix", prefix), ("suffix", suffix)) if text])


def _in_keys(node: In) -> Keys:
    """`type IN ('a', 'b')`: items are cast to the attribute's type, so an item is an exact
    key only when that cast is the identity on its text ('5', not '05'; 'true', not 'TRUE')."""
    if not node.items or not all(_is_string(item) and _canonical(item.value) for item in node.items):  # type: ignore[attr-defined]
        return UNINDEXABLE
    per_item = [_on_attribute(node.operand, "exact", item.value) for item in node.items]  # type: ignore[attr-defined]
    return any_keys(per_item)


def _canonical(text: str) -> bool:
    for target in (CesqlType.INTEGER, CesqlType.BOOLEAN):
        cast = implicit_cast(text, target)
        if cast is not None and to_string(cast) != text:
            return False
    return True


def joined_conditions(parts: Iterable[Conditions | None]) -> Conditions | None:
    """The conditions of a conjunction: every part's, in order and once each, if every part
    has them (None as soon as one has none)."""
    joined: list[Key] = []
    for conditions in parts:
        if conditions is None:
            return None
        joined += conditions
    return tuple(dict.fromkeys(joined))


def cesql_conditions(node: Node) -> Conditions | None:
    """The keys an expression is exactly the conjunction of, when it is one: `AND`s of
    `attr = 'x'` and of `attr LIKE` an exact, prefix-only or suffix-only pattern. For a
    string attribute these evaluate as the key does, and without an error; any other
    shape (or operand) gives None."""
    if isinstance(node, Logical) and node.operator == "AND":
        return joined_conditions(cesql_conditions(operand) for operand in node.operands)
    if isinstance(node, Binary) and node.operator == "=" and _is_string(node.right) \
            and isinstance(node.left, Identifier):
        return (Key(node.left.name, "exact", node.right.value),)  # type: ignore[attr-defined]
    if isinstance(node, Like) and not node.negated and isinstance(node.operand, Identifier):
        shape = simple_shape(node.pattern)
        return None if shape is None else (Key(node.operand.name, *shape),)
    return None
