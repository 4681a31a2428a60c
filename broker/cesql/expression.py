"""Public entry point: compile CESQL text once, evaluate it against many events."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .casting import CesqlType, Failed, Value
from .compiler import Evaluator, compile_ast
from .errors import CesqlError
from .nodes import Node
from .parser import parse

__all__ = ["EvaluationResult", "Expression", "compile_expression"]


@dataclass(frozen=True, slots=True)
class EvaluationResult:
    """The value of an expression for one event, and the errors met computing it.

    ``value`` is a ``bool``, ``int`` or ``str``. When ``errors`` is not empty the
    value is the one the spec prescribes despite the errors (often the zero value
    of the expected type).
    """

    value: Value
    errors: tuple[CesqlError, ...] = ()


class _StopEvaluation(Exception):
    """Aborts a fail-fast evaluation at the first reported error."""


class _FailFast:
    """Error sink for filtering: the first error ends evaluation (spec 1.2 and 4.1)."""

    __slots__ = ()

    def append(self, error: CesqlError, /) -> None:
        raise _StopEvaluation


_FAIL_FAST = _FailFast()


class _Reporting:
    """Fail-fast, after handing the error to a callback."""

    __slots__ = ("_on_error",)

    def __init__(self, on_error: Callable[[CesqlError], None]) -> None:
        self._on_error = on_error

    def append(self, error: CesqlError, /) -> None:
        self._on_error(error)
        raise _StopEvaluation


class Expression:
    """A compiled CESQL expression; immutable and safe to share between threads.

    Obtain one with :func:`compile_expression`.
    """

    __slots__ = ("_evaluator", "_result_type", "_text", "_tree")

    def __init__(self, text: str, evaluator: Evaluator, result_type: CesqlType | None, tree: Node) -> None:
        self._text = text
        self._evaluator = evaluator
        self._result_type = result_type
        self._tree = tree

    @property
    def text(self) -> str:
        """The original expression text."""
        return self._text

    @property
    def tree(self) -> Node:
        """The parsed expression (what a router reads to index it)."""
        return self._tree

    @property
    def result_type(self) -> CesqlType | None:
        """The static result type, or ``None`` for a bare attribute reference."""
        return self._result_type

    def evaluate(self, event: Mapping[str, Any]) -> EvaluationResult:
        """Evaluate against an event and collect every error (complete evaluation mode).

        ``event`` maps lower-case context attribute and extension names to
        ``str``, ``int`` or ``bool`` values (other values are read as strings);
        absent keys, and ``None`` values, are missing attributes. Evaluation
        errors are returned in the result, never raised.
        """
        errors: list[CesqlError] = []
        value = self._evaluator(event, errors)
        if type(value) is Failed:
            value = value.value
        return EvaluationResult(value, tuple(errors))

    def matches(self, event: Mapping[str, Any], on_error: Callable[[CesqlError], None] | None = None) -> bool:
        """Filter semantics (spec 1.2): true only for the value ``true`` with no error.

        Evaluation stops at the first error (fail-fast mode, spec 4.1), which is
        passed to ``on_error`` when given, so a broker can report it.
        """
        try:
            return self._evaluator(event, _FAIL_FAST if on_error is None else _Reporting(on_error)) is True
        except _StopEvaluation:
            return False

    def __repr__(self) -> str:
        return f"Expression({self._text!r})"


def compile_expression(text: str) -> Expression:
    """Parse and compile a CESQL expression.

    Raises :class:`~fmesh.broker.cesql.CesqlParseError` (a ``ValueError``) with
    the 1-based ``line`` and ``column`` of the first syntax error. Calls to
    unknown functions are not parse errors: per the spec they evaluate to
    ``false`` with a MissingFunctionError.
    """
    if not isinstance(text, str):
        raise TypeError(f"CESQL expression must be a str, not {type(text).__name__}")
    tree = parse(text)
    compiled = compile_ast(tree)
    return Expression(text, compiled.fn, compiled.type, tree)
