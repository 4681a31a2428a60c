"""The keys a CESQL expression implies, for the router's indexes (see broker/filter_keys.py).

Apart from the rest of filter_keys so that a mesh without a CESQL filter never loads the
CESQL compiler (about 1.8 MiB).
"""

from __future__ import annotations

from fmesh.broker.cesql.casting import CesqlType, implicit_cast, to_string
from fmesh.broker.cesql.like import literal_affixes, simple_shape
from fmesh.broker.cesql.nodes import Binary, Identifier, In, Like, Literal, Logical, Node
from fmesh.broker.filter_keys import UNINDEXABLE, Conditions, Key, Keys, all_keys, any_keys, joined_conditions

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
