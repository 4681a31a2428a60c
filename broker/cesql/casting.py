"""CESQL type system (spec 3.1) and type casting (spec 3.7).

CESQL values are plain Python objects: ``str`` (String), ``int`` within the
signed 32-bit range (Integer) and ``bool`` (Boolean). Because ``bool`` is a
subclass of ``int`` in Python, type tests here always use ``type(v) is ...``.

Casts come in two flavours:

* *explicit* casts, done by the ``INT``, ``BOOL`` and ``STRING`` functions, follow
  the table of spec 3.7 exactly;
* *implicit* casts, done when an operator or function receives an argument of
  another type, follow the same table except that Integer -> Boolean is refused
  with a CastError (and the value ``false``). That conversion is the only lossy
  one in the table, and the TCK requires ``NOT 10`` to yield ``true`` plus a cast
  error; explicit ``BOOL(10)`` stays available.
"""

from __future__ import annotations

import base64
import datetime as _dt
import enum
import re
from typing import Protocol

from .errors import CesqlCastError, CesqlError

__all__ = [
    "INT32_MAX",
    "INT32_MIN",
    "MISSING",
    "CesqlType",
    "ErrorSink",
    "Failed",
    "Value",
    "can_cast",
    "cast_failure",
    "describe_value",
    "explicit_boolean",
    "explicit_integer",
    "from_event_value",
    "implicit_cast",
    "implicit_cast_error",
    "parse_boolean",
    "parse_integer",
    "to_string",
    "type_of",
    "zero_value",
]

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

Value = str | int | bool


class ErrorSink(Protocol):
    """Where evaluation reports errors: a ``list`` or a fail-fast collector."""

    def append(self, error: CesqlError, /) -> None: ...


class Failed:
    """A value produced together with an error, as passed between evaluator closures.

    The spec (3.2) has the operator receiving a missing attribute return the
    zero value of its return type instead of computing; the same holds for any
    operand whose evaluation reported an error. ``value`` is what the failed
    sub-expression evaluates to when it is the whole expression.
    """

    __slots__ = ("value",)

    def __init__(self, value: Value) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Failed({self.value!r})"


#: What reading an absent attribute yields (``false`` when it is the whole expression).
MISSING = Failed(False)


class CesqlType(enum.Enum):
    """The primitive CESQL types, plus ``ANY`` for parameters that accept every type."""

    BOOLEAN = "Boolean"
    INTEGER = "Integer"
    STRING = "String"
    ANY = "Any"

    @property
    def python_type(self) -> type:
        """The Python class that holds values of this type."""
        return _PYTHON_TYPES[self]


_PYTHON_TYPES: dict[CesqlType, type] = {
    CesqlType.BOOLEAN: bool,
    CesqlType.INTEGER: int,
    CesqlType.STRING: str,
    CesqlType.ANY: object,
}
_TYPE_OF_PYTHON = {bool: CesqlType.BOOLEAN, int: CesqlType.INTEGER, str: CesqlType.STRING}
_ZERO_VALUES: dict[CesqlType, Value] = {
    CesqlType.BOOLEAN: False,
    CesqlType.INTEGER: 0,
    CesqlType.STRING: "",
    # Spec 3.2: when the type cannot be determined, assume Boolean.
    CesqlType.ANY: False,
}


def type_of(value: Value) -> CesqlType:
    """The CESQL type of a CESQL value."""
    return _TYPE_OF_PYTHON[type(value)]


def zero_value(cesql_type: CesqlType) -> Value:
    """The zero ("default") value of a type (spec 3.1)."""
    return _ZERO_VALUES[cesql_type]


def describe_value(value: Value, limit: int = 40) -> str:
    """Short human description of a value for error messages, e.g. ``string 'abc'``."""
    if type(value) is bool:
        return f"boolean {'true' if value else 'false'}"
    if type(value) is int:
        return f"integer {value}"
    text = repr(value) if len(value) <= limit else repr(value[:limit]) + "..."
    return f"string {text}"


# ASCII digits only: str.isdigit()/int() would also accept other Unicode digits,
# underscores and surrounding whitespace, none of which is a base-10 CESQL integer.
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")


def parse_integer(text: str) -> int | None:
    """Read a String as a 32-bit base-10 Integer; ``None`` when invalid or out of range."""
    if len(text) < 10 and text.isascii() and text.isdigit():  # fast path: fits in 31 bits
        return int(text)
    if _INTEGER_TEXT.fullmatch(text) is None:
        return None
    number = int(text)
    return number if INT32_MIN <= number <= INT32_MAX else None


def parse_boolean(text: str) -> bool | None:
    """Read a String as a Boolean (case-insensitive ``true``/``false``); ``None`` otherwise."""
    if len(text) == 4 and text.lower() == "true":
        return True
    if len(text) == 5 and text.lower() == "false":
        return False
    return None


def to_string(value: Value) -> str:
    """Cast any value to String; this cast never fails."""
    if type(value) is str:
        return value
    if type(value) is bool:
        return "true" if value else "false"
    return str(value)


def cast_failure(value: Value, target: CesqlType, *, implicit: bool = False) -> str:
    """The problem statement of a failed cast, for error messages."""
    if implicit and type(value) is int and target is CesqlType.BOOLEAN:
        return (
            f"cannot implicitly cast {describe_value(value)} to Boolean "
            "(use BOOL() for an explicit conversion)"
        )
    if type(value) is str and target is CesqlType.INTEGER and _INTEGER_TEXT.fullmatch(value):
        return f"cannot cast {describe_value(value)} to Integer: outside the 32-bit range"
    return f"cannot cast {describe_value(value)} to {target.value}"


def explicit_integer(value: Value) -> int | None:
    """``INT(value)`` semantics; ``None`` when the cast fails."""
    if isinstance(value, bool):
        return 1 if value else 0
    if isinstance(value, int):
        return value
    return parse_integer(value)


def explicit_boolean(value: Value) -> bool | None:
    """``BOOL(value)`` semantics; ``None`` when the cast fails."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    return parse_boolean(value)


def can_cast(value: Value, target: CesqlType) -> bool:
    """Whether the explicit cast of ``value`` to ``target`` succeeds without error."""
    if target is CesqlType.INTEGER:
        return explicit_integer(value) is not None
    if target is CesqlType.BOOLEAN:
        return explicit_boolean(value) is not None
    return True


def implicit_cast(value: Value, target: CesqlType) -> Value | None:
    """Implicit cast of ``value`` to ``target`` (spec 3.7); ``None`` when it fails.

    Same as the explicit casts except that Integer -> Boolean is refused.
    """
    if target is CesqlType.INTEGER:
        return explicit_integer(value)
    if target is CesqlType.BOOLEAN:
        return None if type(value) is int else explicit_boolean(value)
    if target is CesqlType.STRING:
        return to_string(value)
    return value


def implicit_cast_error(value: Value, target: CesqlType, line: int, column: int) -> CesqlCastError:
    """The error reported when :func:`implicit_cast` fails."""
    return CesqlCastError(cast_failure(value, target, implicit=True), line=line, column=column)


def from_event_value(value: object) -> Value:
    """Represent an event attribute value as a CESQL value (spec 3.2).

    Values that are not a CESQL primitive are represented as String, using the
    CloudEvents canonical string encoding where there is one (RFC 3339 for
    timestamps, Base64 for binary). Integers outside the 32-bit range are not
    valid CloudEvents Integers, so they too become their decimal String.
    """
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        number = int(value)
        return number if INT32_MIN <= number <= INT32_MAX else str(number)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, _dt.datetime | _dt.date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)
