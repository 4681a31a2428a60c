"""Subscription filters with Knative's dialects: exact, prefix, suffix, all, any, not (and cesql).

Two spellings compile to the same filters:

- the shorthand of an `on:` item, `{type: com.shop.created, source: {prefix: /web}}`:
  every attribute must match; a plain value means exact;
- Knative's `filters:` list, `[{exact: {type: X}}, {any: [{prefix: {source: /a}}, ...]}]`:
  every entry must match.

A filter also says what an event must have for it to match (`keys`, see
broker/filter_keys.py), so the router can look it up instead of trying it on every event;
and, when it is no more than a conjunction of such keys (`conditions`), the router checks
those itself instead of calling the filter: the same answer, without walking a closure
tree per candidate, which is what makes many distinct filters slow (their trees fall out
of the CPU caches).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fmesh.broker.filter_keys import UNINDEXABLE, Conditions, Key, Keys, all_keys, any_keys, joined_conditions

ATTRIBUTE_DIALECTS = ("exact", "prefix", "suffix")
DIALECTS = (*ATTRIBUTE_DIALECTS, "all", "any", "not", "cesql")


class FilterError(ValueError):
    """A filter that does not compile; `path` says where in the filter it is."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


def attribute_text(value: Any) -> str:
    """How an attribute value compares in a filter: its CloudEvents string form."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


@dataclass
class FilterErrors:
    """Evaluation errors of a filter's CESQL expressions: they count as "no match", and
    are reported here instead of raised through the broker."""

    count: int = 0
    last: str | None = None

    def record(self, error: Exception) -> None:
        self.count += 1
        self.last = str(error)


@dataclass(frozen=True, slots=True)
class Filter:
    """A compiled filter: call it with the event's attributes.

    `keys` are the ways the router may index it (see broker/filter_keys.py): () when
    there is none and it must be tried on every event. `conditions`, when not None, are
    keys the filter is exactly the conjunction of, for events whose attributes they name
    are all present as strings (for others only `test` decides).
    """

    test: Callable[[Mapping[str, Any]], bool]
    keys: Keys
    description: str
    errors: FilterErrors = field(default_factory=FilterErrors, compare=False)
    conditions: Conditions | None = None

    def __call__(self, attributes: Mapping[str, Any]) -> bool:
        return self.test(attributes)


MATCH_ALL = Filter(lambda attributes: True, UNINDEXABLE, "all events")


def _attribute_filter(dialect: str, name: str, expected: str) -> Filter:
    if dialect == "exact":
        def test(a: Mapping[str, Any]) -> bool:
            value = a.get(name)
            return value is not None and attribute_text(value) == expected
    elif dialect == "prefix":
        def test(a: Mapping[str, Any]) -> bool:
            value = a.get(name)
            return value is not None and attribute_text(value).startswith(expected)
    else:
        def test(a: Mapping[str, Any]) -> bool:
            value = a.get(name)
            return value is not None and attribute_text(value).endswith(expected)
    key = Key(name, dialect, expected)
    return Filter(test, ((key,),), f"{name} {dialect} {expected!r}", conditions=(key,))


def all_of(filters: list[Filter], errors: FilterErrors | None = None) -> Filter:
    errors = errors or FilterErrors()
    if not filters:
        return Filter(MATCH_ALL.test, UNINDEXABLE, MATCH_ALL.description, errors)
    tests = tuple(f.test for f in filters)
    keys = all_keys([f.keys for f in filters])
    conditions = joined_conditions(f.conditions for f in filters)
    if len(filters) == 1:
        return Filter(tests[0], keys, filters[0].description, errors, conditions)
    return Filter(lambda a: all(t(a) for t in tests), keys, " and ".join(f.description for f in filters), errors,
                  conditions)


def any_of(filters: list[Filter], errors: FilterErrors | None = None) -> Filter:
    errors = errors or FilterErrors()
    tests = tuple(f.test for f in filters)
    keys = any_keys([f.keys for f in filters])
    description = " or ".join(f"({f.description})" for f in filters) or "nothing"
    if len(filters) == 1:
        return Filter(tests[0], keys, filters[0].description, errors, filters[0].conditions)
    return Filter(lambda a: any(t(a) for t in tests), keys, description, errors)


def negate(inner: Filter) -> Filter:
    test = inner.test
    return Filter(lambda a: not test(a), UNINDEXABLE, f"not ({inner.description})", inner.errors)


def _check_attribute_name(name: Any, path: str) -> str:
    if not isinstance(name, str) or not name or not name.isalnum() or name.lower() != name:
        raise FilterError(path, f"{name!r} is not a CloudEvents attribute name (lowercase letters and digits)")
    return name


def _check_text(value: Any, path: str) -> str:
    if isinstance(value, bool | int | str):
        return attribute_text(value)
    raise FilterError(path, f"expected a string to compare with, got {type(value).__name__}")


def compile_shorthand(spec: Mapping[str, Any], path: str = "", errors: FilterErrors | None = None) -> Filter:
    """`{attr: value | {exact|prefix|suffix: value}}`: all attributes must match."""
    errors = errors or FilterErrors()
    if not isinstance(spec, Mapping):
        raise FilterError(path, f"expected a mapping of attribute to value, got {type(spec).__name__}")
    parts = []
    for name, expected in spec.items():
        where = f"{path}.{name}" if path else str(name)
        if name == "filters":
            parts.append(compile_filters(expected, where, errors))
            continue
        if name == "cesql":
            parts.append(_cesql(expected, where, errors))
            continue
        _check_attribute_name(name, where)
        if isinstance(expected, Mapping):
            if len(expected) != 1 or next(iter(expected)) not in ATTRIBUTE_DIALECTS:
                raise FilterError(where, f"expected one of {{exact|prefix|suffix: value}}, got {dict(expected)!r}")
            dialect, value = next(iter(expected.items()))
            parts.append(_attribute_filter(dialect, name, _check_text(value, f"{where}.{dialect}")))
        else:
            parts.append(_attribute_filter("exact", name, _check_text(expected, where)))
    return all_of(parts, errors)


def compile_filters(specs: Any, path: str = "filters", errors: FilterErrors | None = None) -> Filter:
    """Knative's `filters:` list: every entry must match."""
    errors = errors or FilterErrors()
    if not isinstance(specs, list):
        raise FilterError(path, f"expected a list of filters, got {type(specs).__name__}")
    return all_of([compile_dialect(spec, f"{path}[{i}]", errors) for i, spec in enumerate(specs)], errors)


def compile_dialect(spec: Any, path: str, errors: FilterErrors | None = None) -> Filter:
    """One Knative filter expression: `{exact: {...}}`, `{all: [...]}`, `{not: {...}}`, ..."""
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise FilterError(path, f"expected exactly one of {', '.join(DIALECTS)}, got {spec!r}")
    dialect, body = next(iter(spec.items()))
    where = f"{path}.{dialect}"
    if dialect in ATTRIBUTE_DIALECTS:
        if not isinstance(body, Mapping) or not body:
            raise FilterError(where, "expected a mapping of attribute to value")
        return all_of([_attribute_filter(dialect, _check_attribute_name(k, f"{where}.{k}"),
                                         _check_text(v, f"{where}.{k}")) for k, v in body.items()])
    if dialect in ("all", "any"):
        if not isinstance(body, list) or not body:
            raise FilterError(where, "expected a non-empty list of filters")
        compiled = [compile_dialect(s, f"{where}[{i}]", errors) for i, s in enumerate(body)]
        return all_of(compiled, errors) if dialect == "all" else any_of(compiled, errors)
    if dialect == "not":
        return negate(compile_dialect(body, where, errors))
    if dialect == "cesql":
        return _cesql(body, where, errors)
    raise FilterError(path, f"unknown filter dialect {dialect!r}: expected one of {', '.join(DIALECTS)}")


def _cesql(expression: Any, path: str, errors: FilterErrors | None) -> Filter:
    if not isinstance(expression, str) or not expression.strip():
        raise FilterError(path, "expected a CESQL expression string")
    # Loaded with the first CESQL filter: a mesh without one never pays for the compiler.
    from fmesh.broker.cesql import CesqlParseError, compile_expression
    from fmesh.broker.cesql.keys import cesql_conditions, cesql_keys

    try:
        compiled = compile_expression(expression)
    except CesqlParseError as exc:
        raise FilterError(path, f"invalid CESQL expression: {exc}") from exc
    errors = errors or FilterErrors()
    matches, record = compiled.matches, errors.record
    return Filter(lambda a: matches(a, record), cesql_keys(compiled.tree), f"cesql {expression!r}", errors,
                  cesql_conditions(compiled.tree))
