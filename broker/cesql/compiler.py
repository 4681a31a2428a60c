"""Compilation of a CESQL AST into a tree of Python closures.

Every node becomes one closure ``evaluate(event, errors) -> value`` that calls
its operands' closures directly, so evaluating an event never inspects the AST
or the expression text. Constant sub-expressions are folded, constant operands
are cast to the operator's type ahead of time, LIKE patterns are pre-compiled
and ``IN`` sets of constants become frozensets. Each closure has a fast path for
operands that already have the operator's types; casts and errors are handled
in a slower path.

Semantics (spec section 3):

* Errors are appended to ``errors`` and evaluation goes on (complete evaluation
  mode); ``AND``/``OR`` skip their right operand when the left one decides.
* A sub-expression that reports an error evaluates to a :class:`Failed` value:
  an absent attribute, a division by zero, a function that rejects its
  arguments, or an operator whose implicit cast failed. The operator or
  function receiving a ``Failed`` operand returns the zero value of its return
  type without computing, as spec 3.2 prescribes for missing attributes
  (``1 / missing`` is ``0`` with no MathError; ``1 != 1 / 0`` is ``false``).
* A failed implicit cast gives the zero value of the target type and the
  operator still computes: ``NOT 10`` is ``true`` with a CastError (spec 3.7).
* Integers are 32-bit: ``/`` truncates toward zero, ``%`` takes the sign of the
  dividend, division by zero yields ``0``, and results outside the range
  saturate at the nearest bound, as ``ABS(-2147483648)`` does (spec 3.5.2);
  each reports a MathError.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from .casting import (
    INT32_MAX,
    INT32_MIN,
    MISSING,
    CesqlType,
    ErrorSink,
    Failed,
    Value,
    from_event_value,
    implicit_cast,
    implicit_cast_error,
    to_string,
    type_of,
    zero_value,
)
from .errors import (
    CesqlGenericError,
    CesqlMathError,
    CesqlMissingAttributeError,
    CesqlMissingFunctionError,
)
from .functions import BUILTINS, FunctionDef, FunctionFailed, FunctionRegistry
from .like import compile_like
from .nodes import Binary, Call, Exists, Identifier, In, Like, Literal, Logical, Node, Unary

__all__ = ["REQUIRED_ATTRIBUTES", "Compiled", "Evaluator", "compile_ast"]

Evaluator = Callable[[Mapping[str, Any], ErrorSink], Any]

#: Spec 3.4.4: EXISTS is always true for these, the input event being valid.
REQUIRED_ATTRIBUTES = frozenset({"specversion", "id", "source", "type"})

_BOOLEAN, _INTEGER, _STRING, _ANY = (
    CesqlType.BOOLEAN,
    CesqlType.INTEGER,
    CesqlType.STRING,
    CesqlType.ANY,
)
_NOT_CONSTANT = object()
_EMPTY_EVENT: Mapping[str, Any] = MappingProxyType({})
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "XOR": operator.ne,
}
_EQUALITY = frozenset({"=", "!=", "<>"})


def _truncating_divide(dividend: int, divisor: int) -> int:
    quotient = abs(dividend) // abs(divisor)
    return quotient if (dividend < 0) == (divisor < 0) else -quotient


def _truncating_remainder(dividend: int, divisor: int) -> int:
    remainder = abs(dividend) % abs(divisor)
    return remainder if dividend >= 0 else -remainder


_ARITHMETIC: dict[str, Callable[[int, int], int]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": _truncating_divide,
    "%": _truncating_remainder,
}


@dataclass(frozen=True, slots=True)
class Compiled:
    """A compiled sub-expression and what is statically known about it."""

    fn: Evaluator
    type: CesqlType | None  # None: only known per event (attribute reads)
    constant: Any = _NOT_CONSTANT

    @property
    def is_constant(self) -> bool:
        return self.constant is not _NOT_CONSTANT


class _Slot(NamedTuple):
    """An operand position: the type it is cast to and where errors point."""

    target: CesqlType
    line: int
    column: int


def _slot(target: CesqlType, node: Node) -> _Slot:
    return _Slot(target, node.line, node.column)


def _constant(value: Value) -> Compiled:
    def constant(event: Mapping[str, Any], errors: ErrorSink) -> Value:
        return value

    return Compiled(constant, type_of(value), constant=value)


def _precast(compiled: Compiled, target: CesqlType) -> Compiled:
    """Cast a constant operand at compile time when that cannot fail."""
    if not compiled.is_constant or target is _ANY or compiled.type is target:
        return compiled
    value = implicit_cast(compiled.constant, target)
    return compiled if value is None else _constant(value)


def _fold(compiled: Compiled, operands: Iterable[Compiled]) -> Compiled:
    """Evaluate once at compile time a node whose operands are all constants.

    A node whose evaluation reports an error (``1 / 0``) is kept as it is, so
    that every evaluation still reports the error.
    """
    if not all(operand.is_constant for operand in operands):
        return compiled
    errors: list[Any] = []
    value = compiled.fn(_EMPTY_EVENT, errors)
    return compiled if errors else _constant(value)


# -- slow-path helpers -------------------------------------------------------------


def _flag(value: Any, failed: bool) -> Any:
    """Mark a result as produced together with an error."""
    return Failed(value) if failed and type(value) is not Failed else value


def _cast_operand(value: Value, slot: _Slot, errors: ErrorSink) -> tuple[Value, bool]:
    """Implicitly cast a (non-failed) operand: ``(value, whether the cast failed)``."""
    target = slot.target
    if target is _ANY or type(value) is target.python_type:
        return value, False
    cast = implicit_cast(value, target)
    if cast is None:
        errors.append(implicit_cast_error(value, target, slot.line, slot.column))
        return zero_value(target), True
    return cast, False


def _prepare(
    values: Sequence[Any], slots: Sequence[_Slot], errors: ErrorSink
) -> tuple[list[Value], bool] | None:
    """Cast operands to their slots: ``None`` if one failed, else ``(values, cast_failed)``."""
    if any(type(value) is Failed for value in values):
        return None
    cast_failed = False
    prepared = []
    for value, slot in zip(values, slots, strict=True):
        cast, failed = _cast_operand(value, slot, errors)
        prepared.append(cast)
        cast_failed = cast_failed or failed
    return prepared, cast_failed


def _overflow(result: int, operation: str, errors: ErrorSink, line: int, column: int) -> Failed:
    problem = f"integer overflow: {operation} is outside the 32-bit range"
    errors.append(CesqlMathError(problem, line=line, column=column))
    return Failed(INT32_MAX if result > INT32_MAX else INT32_MIN)


class _Compiler:
    def __init__(self, registry: FunctionRegistry) -> None:
        self.registry = registry

    def compile(self, node: Node) -> Compiled:
        if isinstance(node, Literal):
            return _constant(node.value)
        if isinstance(node, Identifier):
            return Compiled(_attribute_reader(node), None)
        if isinstance(node, Exists):
            return self.exists(node)
        if isinstance(node, Unary):
            return self.unary(node)
        if isinstance(node, Binary):
            return self.binary(node)
        if isinstance(node, Logical):
            return self.logical(node)
        if isinstance(node, Like):
            return self.like(node)
        if isinstance(node, In):
            return self.membership(node)
        if isinstance(node, Call):
            return self.call(node)
        raise TypeError(f"unknown CESQL node {node!r}")

    def exists(self, node: Exists) -> Compiled:
        if node.name in REQUIRED_ATTRIBUTES:
            return _constant(True)
        return Compiled(_existence_check(node), _BOOLEAN)

    def unary(self, node: Unary) -> Compiled:
        operand = self.compile(node.operand)
        if node.operator == "NOT":
            fn = _negation(_precast(operand, _BOOLEAN), _slot(_BOOLEAN, node.operand))
            compiled = Compiled(fn, _BOOLEAN)
        else:
            fn = _minus(_precast(operand, _INTEGER), _slot(_INTEGER, node.operand), node)
            compiled = Compiled(fn, _INTEGER)
        return _fold(compiled, [operand])

    def binary(self, node: Binary) -> Compiled:
        symbol = node.operator
        left, right = self.compile(node.left), self.compile(node.right)
        if symbol in _EQUALITY and right.type is None:
            fn = _dynamic_equality(_COMPARISONS[symbol], left, right, node.left)
            return _fold(Compiled(fn, _BOOLEAN), [left, right])
        if symbol in _ARITHMETIC:
            target, result_type = _INTEGER, _INTEGER
        elif symbol in _EQUALITY:
            # Spec 3.7: "=" is overloaded for every type; the right operand's
            # type selects the overload and the left operand is cast to it.
            target, result_type = right.type, _BOOLEAN
        else:
            target, result_type = (_BOOLEAN if symbol == "XOR" else _INTEGER), _BOOLEAN
        assert target is not None
        slots = (_slot(target, node.left), _slot(target, node.right))
        operands = (_precast(left, target), _precast(right, target))
        if symbol in _ARITHMETIC:
            fn = _arithmetic(_int32_operation(symbol, node), *operands, slots)
        else:
            fn = _comparison(_COMPARISONS[symbol], *operands, slots)
        return _fold(Compiled(fn, result_type), [left, right])

    def logical(self, node: Logical) -> Compiled:
        operands = [self.compile(operand) for operand in node.operands]
        chain = _logic_chain(
            [_precast(operand, _BOOLEAN) for operand in operands],
            [_slot(_BOOLEAN, operand) for operand in node.operands],
            stop=node.operator == "OR",
        )
        return _fold(Compiled(chain, _BOOLEAN), operands)

    def like(self, node: Like) -> Compiled:
        operand = self.compile(node.operand)
        fn = _like(_precast(operand, _STRING), compile_like(node.pattern), node.negated)
        return _fold(Compiled(fn, _BOOLEAN), [operand])

    def membership(self, node: In) -> Compiled:
        left = self.compile(node.operand)
        items = [self.compile(item) for item in node.items]
        positions = tuple((item.line, item.column) for item in node.items)
        fn = _membership(left, items, positions, node.negated)
        return _fold(Compiled(fn, _BOOLEAN), [left, *items])

    def call(self, node: Call) -> Compiled:
        definition = self.registry.resolve(node.name, len(node.args))
        if definition is None:
            return Compiled(_missing_function(node, self.registry), _BOOLEAN)
        slots = [_slot(definition.param_type(i), arg) for i, arg in enumerate(node.args)]
        args = [self.compile(arg) for arg in node.args]
        precast = [_precast(arg, slot.target) for arg, slot in zip(args, slots, strict=True)]
        fn = _invocation(definition, precast, slots, node)
        return _fold(Compiled(fn, definition.returns), args)


# -- closure builders ----------------------------------------------------------------
# Each returns the evaluator of one node.


def _read_failure(name: str, exc: Exception, node: Node) -> CesqlGenericError:
    problem = f"cannot read attribute {name!r}: {exc!r}"
    return CesqlGenericError(problem, line=node.line, column=node.column)


def _attribute_reader(node: Identifier) -> Evaluator:
    name = node.name
    missing = f"missing attribute {name!r}"

    def read(event: Mapping[str, Any], errors: ErrorSink) -> Any:
        try:
            value = event.get(name)
            kind = type(value)
            if kind is str or kind is bool:
                return value
            if kind is int and INT32_MIN <= value <= INT32_MAX:
                return value
            if value is not None:
                return from_event_value(value)
        except Exception as exc:  # a foreign Mapping failed: report it, never raise
            errors.append(_read_failure(name, exc, node))
            return MISSING
        errors.append(
            CesqlMissingAttributeError(
                missing, attribute=name, line=node.line, column=node.column
            )
        )
        return MISSING

    return read


def _existence_check(node: Exists) -> Evaluator:
    name = node.name

    def exists(event: Mapping[str, Any], errors: ErrorSink) -> Any:
        try:
            return event.get(name) is not None
        except Exception as exc:  # a foreign Mapping failed: report it, never raise
            errors.append(_read_failure(name, exc, node))
            return Failed(False)

    return exists


def _negation(operand: Compiled, slot: _Slot) -> Evaluator:
    fn = operand.fn

    def negation(event: Mapping[str, Any], errors: ErrorSink) -> Any:
        value = fn(event, errors)
        if value is True:
            return False
        if value is False:
            return True
        if type(value) is Failed:
            return False
        flag, failed = _cast_operand(value, slot, errors)
        return _flag(not flag, failed)

    return negation


def _minus(operand: Compiled, slot: _Slot, node: Node) -> Evaluator:
    fn = operand.fn

    def negate(number: int, errors: ErrorSink) -> Any:
        if number == INT32_MIN:
            return _overflow(-number, f"-({number})", errors, node.line, node.column)
        return -number

    def minus(event: Mapping[str, Any], errors: ErrorSink) -> Any:
        value = fn(event, errors)
        if type(value) is int:
            return negate(value, errors)
        if type(value) is Failed:
            return 0
        number, failed = _cast_operand(value, slot, errors)
        return _flag(negate(int(number), errors), failed)

    return minus


def _int32_operation(symbol: str, node: Node) -> Callable[[int, int, ErrorSink], Any]:
    """The 32-bit operation: an int, or a Failed value after reporting a MathError."""
    compute = _ARITHMETIC[symbol]
    divides = symbol in ("/", "%")
    line, column = node.line, node.column

    def operation(a: int, b: int, errors: ErrorSink) -> Any:
        if divides and b == 0:
            errors.append(CesqlMathError("division by zero", line=line, column=column))
            return Failed(0)
        result = compute(a, b)
        if INT32_MIN <= result <= INT32_MAX:
            return result
        return _overflow(result, f"{a} {symbol} {b}", errors, line, column)

    return operation


def _arithmetic(
    operation: Callable[[int, int, ErrorSink], Any],
    left: Compiled,
    right: Compiled,
    slots: tuple[_Slot, _Slot],
) -> Evaluator:
    left_fn, right_fn = left.fn, right.fn

    def arithmetic(event: Mapping[str, Any], errors: ErrorSink) -> Any:
        a = left_fn(event, errors)
        b = right_fn(event, errors)
        if type(a) is int and type(b) is int:
            return operation(a, b, errors)
        prepared = _prepare((a, b), slots, errors)
        if prepared is None:
            return 0
        (x, y), cast_failed = prepared
        return _flag(operation(int(x), int(y), errors), cast_failed)

    return arithmetic


def _comparison(
    compare: Callable[[Any, Any], bool],
    left: Compiled,
    right: Compiled,
    slots: tuple[_Slot, _Slot],
) -> Evaluator:
    """A comparison whose operands are both cast to one type."""
    kind = slots[0].target.python_type
    left_fn, right_fn = left.fn, right.fn

    def compare_cast(a: Any, b: Any, errors: ErrorSink) -> Any:
        prepared = _prepare((a, b), slots, errors)
        if prepared is None:
            return False
        (x, y), cast_failed = prepared
        return _flag(compare(x, y), cast_failed)

    if right.is_constant and type(right.constant) is kind:
        constant = right.constant

        def compare_to_constant(event: Mapping[str, Any], errors: ErrorSink) -> Any:
            value = left_fn(event, errors)
            if type(value) is kind:
                return compare(value, constant)
            return compare_cast(value, constant, errors)

        return compare_to_constant

    def compare_values(event: Mapping[str, Any], errors: ErrorSink) -> Any:
        a = left_fn(event, errors)
        b = right_fn(event, errors)
        if type(a) is kind and type(b) is kind:
            return compare(a, b)
        return compare_cast(a, b, errors)

    return compare_values


def _dynamic_equality(
    compare: Callable[[Any, Any], bool], left: Compiled, right: Compiled, left_node: Node
) -> Evaluator:
    """``=`` / ``!=`` whose right operand type is only known per event."""
    left_fn, right_fn = left.fn, right.fn

    def equality(event: Mapping[str, Any], errors: ErrorSink) -> Any:
        a = left_fn(event, errors)
        b = right_fn(event, errors)
        kind = type(a)
        if kind is type(b) and kind is not Failed:
            return compare(a, b)
        if kind is Failed or type(b) is Failed:
            return False
        x, failed = _cast_operand(a, _slot(type_of(b), left_node), errors)
        return _flag(compare(x, b), failed)

    return equality


def _logic_chain(operands: list[Compiled], slots: list[_Slot], stop: bool) -> Evaluator:
    """Left-associative ``AND`` (``stop=False``) or ``OR`` (``stop=True``) chain.

    Behaves exactly like the nested binary operations: a step whose left
    operand equals ``stop`` skips its right operand, and a step with a failed
    operand yields ``false``.
    """
    first, first_slot = operands[0].fn, slots[0]
    steps = tuple(zip((operand.fn for operand in operands[1:]), slots[1:], strict=True))

    def chain(event: Mapping[str, Any], errors: ErrorSink) -> Any:
        value = first(event, errors)
        for right_fn, right_slot in steps:
            # The left operand is `value`: the first operand, then the previous step.
            kind = type(value)
            left_failed = False
            if kind is Failed:
                value = False  # this step yields its zero value, right operand unused
                continue
            if kind is not bool:
                value, left_failed = _cast_operand(value, first_slot, errors)
            if value is stop:
                value = _flag(stop, left_failed)
                continue
            right = right_fn(event, errors)
            kind = type(right)
            if kind is Failed:
                value = False
                continue
            right_failed = False
            if kind is not bool:
                right, right_failed = _cast_operand(right, right_slot, errors)
            value = _flag(right, left_failed or right_failed)
        return value

    return chain


def _like(operand: Compiled, matcher: Callable[[str], bool], negated: bool) -> Evaluator:
    fn = operand.fn

    def like(event: Mapping[str, Any], errors: ErrorSink) -> Any:
        value = fn(event, errors)
        if type(value) is str:
            return matcher(value) != negated
        if type(value) is Failed:
            return False
        return matcher(to_string(value)) != negated  # casting to String never fails

    return like


def _constant_sets(items: list[Compiled]) -> dict[type, frozenset[Value] | None] | None:
    """All-constant IN items cast to each possible left type (None where a cast fails)."""
    if not all(item.is_constant for item in items):
        return None
    sets: dict[type, frozenset[Value] | None] = {}
    for target in (_BOOLEAN, _INTEGER, _STRING):
        values = [implicit_cast(item.constant, target) for item in items]
        cast = [value for value in values if value is not None]
        sets[target.python_type] = frozenset(cast) if len(cast) == len(values) else None
    return sets


def _membership(
    left: Compiled, items: list[Compiled], positions: tuple[tuple[int, int], ...], negated: bool
) -> Evaluator:
    """``[NOT] IN``: items are cast to the type of the left value (spec 3.7)."""
    left_fn = left.fn

    def member_cast(value: Any, members: Sequence[Any], errors: ErrorSink) -> Any:
        if type(value) is Failed or any(type(member) is Failed for member in members):
            return False
        target = type_of(value)
        slots = [_Slot(target, line, column) for line, column in positions]
        prepared = _prepare(members, slots, errors)
        assert prepared is not None
        cast_members, cast_failed = prepared
        return _flag((value in cast_members) != negated, cast_failed)

    sets = _constant_sets(items)
    if sets is not None:
        constants = [item.constant for item in items]

        def member_of_constants(event: Mapping[str, Any], errors: ErrorSink) -> Any:
            value = left_fn(event, errors)
            members = sets.get(type(value))
            if members is not None:
                return (value in members) != negated
            return member_cast(value, constants, errors)

        return member_of_constants
    item_fns = tuple(item.fn for item in items)

    def member(event: Mapping[str, Any], errors: ErrorSink) -> Any:
        value = left_fn(event, errors)
        return member_cast(value, [fn(event, errors) for fn in item_fns], errors)

    return member


def _invocation(
    definition: FunctionDef, args: list[Compiled], slots: list[_Slot], node: Node
) -> Evaluator:
    """Call a built-in; arguments are cast to the parameter types first."""
    impl = definition.impl
    zero = zero_value(definition.returns)
    fns = tuple(arg.fn for arg in args)
    # Python type each argument must already have to take the fast path (None: any).
    kinds = tuple(None if slot.target is _ANY else slot.target.python_type for slot in slots)

    def failed(failure: FunctionFailed, errors: ErrorSink) -> Failed:
        errors.append(failure.error_type(failure.problem, line=node.line, column=node.column))
        return Failed(failure.value)

    def run(values: Sequence[Value], errors: ErrorSink) -> Any:
        try:
            return impl(*values)
        except FunctionFailed as failure:
            return failed(failure, errors)

    def call_cast(values: Sequence[Any], errors: ErrorSink) -> Any:
        prepared = _prepare(values, slots, errors)
        if prepared is None:
            return zero
        cast_values, cast_failed = prepared
        return _flag(run(cast_values, errors), cast_failed)

    if len(fns) == 1:
        (only,), (kind,) = fns, kinds

        def call_one(event: Mapping[str, Any], errors: ErrorSink) -> Any:
            value = only(event, errors)
            value_kind = type(value)
            if value_kind is kind or (kind is None and value_kind is not Failed):
                try:
                    return impl(value)
                except FunctionFailed as failure:
                    return failed(failure, errors)
            return call_cast((value,), errors)

        return call_one

    def call(event: Mapping[str, Any], errors: ErrorSink) -> Any:
        values = [fn(event, errors) for fn in fns]
        for value, kind in zip(values, kinds, strict=True):
            value_kind = type(value)
            if value_kind is not kind and (kind is not None or value_kind is Failed):
                return call_cast(values, errors)
        return run(values, errors)

    return call


def _missing_function(node: Call, registry: FunctionRegistry) -> Evaluator:
    """Spec 3.5: an invocation that cannot be dispatched yields ``false``."""
    overloads = registry.overloads(node.name)
    if overloads:
        available = ", ".join(definition.signature() for definition in overloads)
        count = len(node.args)
        problem = (
            f"function {node.name} does not accept {count} argument"
            f"{'' if count == 1 else 's'} (available: {available})"
        )
    else:
        problem = f"unknown function {node.name}"

    def missing_function(event: Mapping[str, Any], errors: ErrorSink) -> Any:
        errors.append(
            CesqlMissingFunctionError(
                problem, function=node.name, line=node.line, column=node.column
            )
        )
        return Failed(False)

    return missing_function


def compile_ast(root: Node, registry: FunctionRegistry = BUILTINS) -> Compiled:
    """Compile an AST into its evaluator and static result type.

    The evaluator returns either a value or a :class:`Failed` wrapping the value
    the expression evaluates to despite an error; the error itself is appended
    to the ``errors`` sink.
    """
    return _Compiler(registry).compile(root)
