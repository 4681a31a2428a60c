"""Abstract syntax tree of a CESQL expression.

Nodes are immutable and carry the 1-based ``line``/``column`` of the token that
best locates them in the expression text (the operator for operations), which is
where evaluation errors about them are reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from .casting import Value

__all__ = [
    "Binary",
    "Call",
    "Exists",
    "Identifier",
    "In",
    "Like",
    "Literal",
    "Logical",
    "Node",
    "Unary",
    "children",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    """Base class of all nodes."""

    line: int
    column: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Literal(Node):
    """A String, Integer or Boolean literal."""

    value: Value


@dataclass(frozen=True, slots=True, kw_only=True)
class Identifier(Node):
    """A context attribute or extension reference; ``name`` is lower-cased."""

    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Exists(Node):
    """``EXISTS name``."""

    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Unary(Node):
    """``NOT operand`` or ``-operand``."""

    operator: str
    operand: Node


@dataclass(frozen=True, slots=True, kw_only=True)
class Binary(Node):
    """Arithmetic, comparison or ``XOR`` operation; ``operator`` is upper-cased."""

    operator: str
    left: Node
    right: Node


@dataclass(frozen=True, slots=True, kw_only=True)
class Logical(Node):
    """A left-associative chain ``a AND b AND c`` (or ``OR``), kept flat."""

    operator: str
    operands: tuple[Node, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Like(Node):
    """``operand [NOT] LIKE 'pattern'``."""

    operand: Node
    pattern: str
    negated: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class In(Node):
    """``operand [NOT] IN (item, ...)``."""

    operand: Node
    items: tuple[Node, ...]
    negated: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Call(Node):
    """A function invocation; ``name`` is upper-cased."""

    name: str
    args: tuple[Node, ...]


def children(node: Node) -> tuple[Node, ...]:
    """The direct sub-expressions of a node."""
    if isinstance(node, Unary):
        return (node.operand,)
    if isinstance(node, Binary):
        return (node.left, node.right)
    if isinstance(node, Logical):
        return node.operands
    if isinstance(node, Like):
        return (node.operand,)
    if isinstance(node, In):
        return (node.operand, *node.items)
    if isinstance(node, Call):
        return node.args
    return ()
