"""Error types of the CESQL engine, one per error class of spec section 3.3.

Parse errors are raised by :func:`fmesh.broker.cesql.compile_expression`. Every other
error is *reported*: evaluation never raises it, it collects it next to the result
value (see :class:`fmesh.broker.cesql.EvaluationResult`).
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "CesqlCastError",
    "CesqlError",
    "CesqlFunctionEvaluationError",
    "CesqlGenericError",
    "CesqlMathError",
    "CesqlMissingAttributeError",
    "CesqlMissingFunctionError",
    "CesqlParseError",
]


class CesqlError(Exception):
    """Root of all CESQL errors.

    ``kind`` is the error class name used by the CESQL TCK (``parse``, ``math``,
    ``cast``, ``missingAttribute``, ``missingFunction``, ``functionEvaluation``,
    ``generic``). ``line`` and ``column`` (1-based) locate the offending part of
    the expression text when known.
    """

    kind: ClassVar[str] = "generic"

    def __init__(
        self,
        problem: str,
        *,
        line: int | None = None,
        column: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(problem)
        self.problem = problem
        self.line = line
        self.column = column
        self.hint = hint

    @property
    def message(self) -> str:
        """The full message: what went wrong, where, and what was expected."""
        text = self.problem
        if self.line is not None:
            text += f" at line {self.line}, column {self.column}"
        if self.hint:
            text += f": {self.hint}"
        return text

    # The message is rebuilt from the attributes (not from ``args``) so that the
    # default exception pickling, which restores ``__dict__``, keeps the position.
    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class CesqlParseError(CesqlError, ValueError):
    """The expression text is not valid CESQL (spec: *ParseError*)."""

    kind = "parse"
    line: int
    column: int


class CesqlMathError(CesqlError):
    """Division by zero or 32-bit integer overflow (spec: *MathError*)."""

    kind = "math"


class CesqlCastError(CesqlError):
    """A value could not be converted to the required type (spec: *CastError*)."""

    kind = "cast"


class CesqlMissingAttributeError(CesqlError):
    """The expression reads an attribute absent from the event (spec: *MissingAttributeError*)."""

    kind = "missingAttribute"

    def __init__(
        self,
        problem: str,
        *,
        attribute: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        super().__init__(problem, line=line, column=column)
        self.attribute = attribute


class CesqlMissingFunctionError(CesqlError):
    """No function with that name and number of arguments exists (spec: *MissingFunctionError*)."""

    kind = "missingFunction"

    def __init__(
        self,
        problem: str,
        *,
        function: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        super().__init__(problem, line=line, column=column)
        self.function = function


class CesqlFunctionEvaluationError(CesqlError):
    """A function rejected its arguments (spec: *FunctionEvaluationError*)."""

    kind = "functionEvaluation"


class CesqlGenericError(CesqlError):
    """Any other failure, e.g. an event mapping raising when read (spec: *GenericError*)."""

    kind = "generic"
