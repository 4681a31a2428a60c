"""Built-in CESQL functions (spec 3.5) and overload resolution.

A function implementation receives arguments already cast to its parameter
types. To report an error it raises :class:`FunctionFailed` carrying the error
class, the problem and the value the invocation still returns (spec 3.5.3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .casting import (
    INT32_MAX,
    INT32_MIN,
    CesqlType,
    Value,
    can_cast,
    cast_failure,
    explicit_boolean,
    explicit_integer,
    to_string,
)
from .errors import CesqlCastError, CesqlError, CesqlFunctionEvaluationError, CesqlMathError

__all__ = ["BUILTINS", "FunctionDef", "FunctionFailed", "FunctionRegistry"]

_ANY, _BOOLEAN, _INTEGER, _STRING = (
    CesqlType.ANY,
    CesqlType.BOOLEAN,
    CesqlType.INTEGER,
    CesqlType.STRING,
)

# Characters with the Unicode White_Space property. str.strip() without
# arguments would also remove the ASCII separators U+001C..U+001F, which are
# control characters that TRIM must keep.
_UNICODE_WHITESPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


class FunctionFailed(Exception):
    """Raised by an implementation: report ``error_type(problem)`` and return ``value``."""

    def __init__(self, error_type: type[CesqlError], problem: str, value: Value) -> None:
        super().__init__(problem)
        self.error_type = error_type
        self.problem = problem
        self.value = value


@dataclass(frozen=True, slots=True)
class FunctionDef:
    """One overload: fixed parameter types, optional variadic type, return type."""

    name: str
    params: tuple[CesqlType, ...]
    returns: CesqlType
    impl: Callable[..., Value]
    variadic: CesqlType | None = None

    def accepts(self, arity: int) -> bool:
        """Whether a call with ``arity`` arguments dispatches to this overload."""
        if self.variadic is None:
            return arity == len(self.params)
        return arity >= len(self.params)

    def param_type(self, position: int) -> CesqlType:
        """Type of the argument at ``position`` (0-based)."""
        if position < len(self.params):
            return self.params[position]
        assert self.variadic is not None
        return self.variadic

    def signature(self) -> str:
        """Human-readable arity, e.g. ``SUBSTRING/2`` or ``CONCAT_WS/1+``."""
        return f"{self.name}/{len(self.params)}{'+' if self.variadic else ''}"


class FunctionRegistry:
    """Functions by name, enforcing the overloading rules of spec 3.5."""

    def __init__(self, definitions: Iterable[FunctionDef] = ()) -> None:
        self._by_name: dict[str, list[FunctionDef]] = {}
        for definition in definitions:
            self.register(definition)

    def register(self, definition: FunctionDef) -> None:
        """Add an overload; ``ValueError`` when it would make dispatch ambiguous."""
        name = definition.name.upper()
        overloads = [*self._by_name.get(name, []), definition]
        _check_overloads(name, overloads)
        self._by_name[name] = overloads

    def resolve(self, name: str, arity: int) -> FunctionDef | None:
        """The overload of ``name`` accepting ``arity`` arguments, if any."""
        for definition in self._by_name.get(name.upper(), ()):
            if definition.accepts(arity):
                return definition
        return None

    def overloads(self, name: str) -> tuple[FunctionDef, ...]:
        """All overloads registered under ``name``."""
        return tuple(self._by_name.get(name.upper(), ()))


def _check_overloads(name: str, overloads: list[FunctionDef]) -> None:
    fixed = [d for d in overloads if d.variadic is None]
    variadic = [d for d in overloads if d.variadic is not None]
    arities = [len(d.params) for d in fixed]
    if len(set(arities)) != len(arities):
        raise ValueError(f"{name}: two overloads with the same arity")
    if len(variadic) > 1:
        raise ValueError(f"{name}: at most one variadic overload is allowed")
    if variadic and fixed and len(variadic[0].params) <= max(arities):
        raise ValueError(
            f"{name}: the variadic overload needs more fixed parameters "
            "than the arity of every other overload"
        )


# -- String functions (spec 3.5.1) ------------------------------------------


def _length(text: str) -> int:
    return len(text)


def _concat(*texts: str) -> str:
    return "".join(texts)


def _concat_ws(delimiter: str, *texts: str) -> str:
    return delimiter.join(texts)


def _lower(text: str) -> str:
    return text.lower()


def _upper(text: str) -> str:
    return text.upper()


def _trim(text: str) -> str:
    return text.strip(_UNICODE_WHITESPACE)


def _left(text: str, count: int) -> str:
    if count < 0:
        raise FunctionFailed(
            CesqlFunctionEvaluationError, f"LEFT length must not be negative, got {count}", text
        )
    return text[:count]


def _right(text: str, count: int) -> str:
    if count < 0:
        raise FunctionFailed(
            CesqlFunctionEvaluationError, f"RIGHT length must not be negative, got {count}", text
        )
    return text[len(text) - count :] if count < len(text) else text


def _substring(text: str, position: int, length: int | None = None) -> str:
    if position > len(text) or position < -len(text):
        problem = f"SUBSTRING position {position} is outside a string of length {len(text)}"
        raise FunctionFailed(CesqlFunctionEvaluationError, problem, "")
    if length is not None and length < 0:
        problem = f"SUBSTRING length must not be negative, got {length}"
        raise FunctionFailed(CesqlFunctionEvaluationError, problem, "")
    if position == 0:
        return ""
    start = position - 1 if position > 0 else len(text) + position
    return text[start:] if length is None else text[start : start + length]


# -- Math functions (spec 3.5.2) --------------------------------------------


def _abs(number: int) -> int:
    if number == INT32_MIN:
        raise FunctionFailed(
            CesqlMathError, f"ABS({INT32_MIN}) overflows the 32-bit range", INT32_MAX
        )
    return abs(number)


# -- Casting functions -------------------------------------------------------
# INT, BOOL and STRING are the explicit casts of spec 3.7; IS_INT, IS_BOOL and
# IS_STRING tell whether the corresponding explicit cast would succeed.


def _int(value: Value) -> int:
    number = explicit_integer(value)
    if number is None:
        raise FunctionFailed(CesqlCastError, cast_failure(value, _INTEGER), 0)
    return number


def _bool(value: Value) -> bool:
    flag = explicit_boolean(value)
    if flag is None:
        raise FunctionFailed(CesqlCastError, cast_failure(value, _BOOLEAN), False)
    return flag


def _is_int(value: Value) -> bool:
    return can_cast(value, _INTEGER)


def _is_bool(value: Value) -> bool:
    return can_cast(value, _BOOLEAN)


def _is_string(value: Value) -> bool:
    return can_cast(value, _STRING)


BUILTINS = FunctionRegistry(
    [
        FunctionDef("LENGTH", (_STRING,), _INTEGER, _length),
        FunctionDef("CONCAT", (), _STRING, _concat, variadic=_STRING),
        FunctionDef("CONCAT_WS", (_STRING,), _STRING, _concat_ws, variadic=_STRING),
        FunctionDef("LOWER", (_STRING,), _STRING, _lower),
        FunctionDef("UPPER", (_STRING,), _STRING, _upper),
        FunctionDef("TRIM", (_STRING,), _STRING, _trim),
        FunctionDef("LEFT", (_STRING, _INTEGER), _STRING, _left),
        FunctionDef("RIGHT", (_STRING, _INTEGER), _STRING, _right),
        FunctionDef("SUBSTRING", (_STRING, _INTEGER), _STRING, _substring),
        FunctionDef("SUBSTRING", (_STRING, _INTEGER, _INTEGER), _STRING, _substring),
        FunctionDef("ABS", (_INTEGER,), _INTEGER, _abs),
        FunctionDef("INT", (_ANY,), _INTEGER, _int),
        FunctionDef("BOOL", (_ANY,), _BOOLEAN, _bool),
        FunctionDef("STRING", (_ANY,), _STRING, to_string),
        FunctionDef("IS_INT", (_ANY,), _BOOLEAN, _is_int),
        FunctionDef("IS_BOOL", (_ANY,), _BOOLEAN, _is_bool),
        FunctionDef("IS_STRING", (_ANY,), _BOOLEAN, _is_string),
    ]
)
"""The registry of the built-in functions every CESQL engine must provide."""
