"""Unit tests of fmesh.broker.cesql beyond the official TCK (see test_cesql_tck.py)."""

from __future__ import annotations

import base64
import datetime as dt
import pickle
from collections.abc import Iterator, Mapping
from typing import Any

import fmesh.broker.cesql as cesql
import pytest
from fmesh.broker.cesql import (
    CesqlCastError,
    CesqlError,
    CesqlFunctionEvaluationError,
    CesqlGenericError,
    CesqlMathError,
    CesqlMissingAttributeError,
    CesqlMissingFunctionError,
    CesqlParseError,
    CesqlType,
    EvaluationResult,
    Expression,
    compile_expression,
    lexer,
    parser,
)

BASE_EVENT = {
    "specversion": "1.0",
    "id": "e-1",
    "source": "/web",
    "type": "com.shop.order.created",
}


SHOP_FILTER = "type LIKE 'com.shop.%' AND INT(amount) > 100 AND EXISTS region"


def event(**attributes: Any) -> dict[str, Any]:
    return {**BASE_EVENT, **attributes}


def evaluate(text: str, **attributes: Any) -> EvaluationResult:
    return compile_expression(text).evaluate(event(**attributes))


def value_of(text: str, **attributes: Any) -> Any:
    result = evaluate(text, **attributes)
    assert result.errors == (), result.errors
    return result.value


def kinds(result: EvaluationResult) -> list[str]:
    return [error.kind for error in result.errors]


# -- public API --------------------------------------------------------------------


def test_public_api_is_sorted_and_exported() -> None:
    assert cesql.__all__ == sorted(cesql.__all__)
    for name in cesql.__all__:
        assert hasattr(cesql, name)


def test_expression_keeps_its_text_and_result_type() -> None:
    expression = compile_expression("INT(amount) > 100")
    assert isinstance(expression, Expression)
    assert expression.text == "INT(amount) > 100"
    assert expression.result_type is CesqlType.BOOLEAN
    assert compile_expression("amount").result_type is None
    assert "INT(amount) > 100" in repr(expression)


def test_evaluation_result_is_immutable() -> None:
    result = evaluate("1 + 1")
    assert result == EvaluationResult(2, ())
    with pytest.raises(AttributeError):
        result.value = 3  # type: ignore[misc]


def test_error_hierarchy_names_the_tck_kinds() -> None:
    expected = {
        CesqlParseError: "parse",
        CesqlMathError: "math",
        CesqlCastError: "cast",
        CesqlMissingAttributeError: "missingAttribute",
        CesqlMissingFunctionError: "missingFunction",
        CesqlFunctionEvaluationError: "functionEvaluation",
        CesqlGenericError: "generic",
    }
    for error_type, kind in expected.items():
        assert issubclass(error_type, CesqlError)
        assert error_type.kind == kind
    assert issubclass(CesqlParseError, ValueError)


def test_non_string_expression_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        compile_expression(42)  # type: ignore[arg-type]


# -- parse errors ------------------------------------------------------------------


def test_parse_error_message_names_token_position_and_expectation() -> None:
    with pytest.raises(CesqlParseError) as caught:
        compile_expression("id = 'a' AND AND b")
    error = caught.value
    assert (error.line, error.column) == (1, 14)
    assert str(error) == "unexpected token 'AND' at line 1, column 14: expected an expression"


@pytest.mark.parametrize(
    ("text", "line", "column", "fragment"),
    [
        ("ABC(", 1, 5, "unexpected end of expression"),
        ("(1 + 2", 1, 7, "expected ')'"),
        ("type = 'a'\n  AND (1 +)", 2, 11, "unexpected token ')'"),
        ("a = 1\r\nOR\n\tb = #", 3, 6, "unexpected character '#'"),
        ("x LIKE 123", 1, 8, "string literal as the LIKE pattern"),
        ("x LIKE y", 1, 8, "string literal as the LIKE pattern"),
        ("subject = 'abc", 1, 11, "unterminated string literal"),
        ('"a\\"', 1, 1, "unterminated string literal"),
        ("2147483648", 1, 1, "integer literal 2147483648 is out of range"),
        ("-2147483649", 1, 1, "integer literal -2147483649 is out of range"),
        ("- 2147483648", 1, 3, "out of range"),
        ("99999999999999999999999999999999999999999", 1, 1, "out of range"),
        ("x IN ()", 1, 7, "an IN set cannot be empty"),
        ("x IN 1", 1, 6, "'(' opening the IN set"),
        ("x NOT 1", 1, 7, "expected LIKE or IN after NOT"),
        ("EXISTS 1", 1, 8, "an attribute name after EXISTS"),
        ("my_ext = 1", 1, 1, "invalid attribute name 'my_ext'"),
        ("f1(x)", 1, 1, "invalid function name 'f1'"),
        ("1 2", 1, 3, "expected an operator or the end of the expression"),
        ("+x", 1, 1, "unexpected token '+'"),
        ("a == b", 1, 4, "unexpected token '='"),
        ("LEFT('a' 1)", 1, 10, "expected ',' or ')'"),
        ("", 1, 1, "unexpected end of expression"),
        ("type = 'é' AND ü", 1, 16, "unexpected character 'ü'"),
    ],
)
def test_parse_error_positions(text: str, line: int, column: int, fragment: str) -> None:
    with pytest.raises(CesqlParseError) as caught:
        compile_expression(text)
    assert (caught.value.line, caught.value.column) == (line, column), str(caught.value)
    assert fragment in str(caught.value)
    assert f"at line {line}, column {column}" in str(caught.value)


def test_excessive_nesting_is_a_parse_error_not_a_recursion_error() -> None:
    depth = parser.MAX_NESTING + 5
    deep = ("(" * depth + "1" + ")" * depth, "NOT " * depth + "true", " + ".join(["1"] * depth))
    for text in deep:
        with pytest.raises(CesqlParseError, match="nested too deeply"):
            compile_expression(text)


def test_long_logical_chains_are_not_limited_by_nesting() -> None:
    text = " OR ".join(f"id = 'e-{n}'" for n in range(2000))
    assert compile_expression(text).matches(event(id="e-1999"))


def test_parse_errors_pickle_with_their_position() -> None:
    with pytest.raises(CesqlParseError) as caught:
        compile_expression("1 +")
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (copy.line, copy.column, str(copy)) == (1, 4, str(caught.value))


# -- literals, identifiers, keywords ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("'it\\'s'", "it's"),
        ('"say \\"hi\\""', 'say "hi"'),
        ("'mixed \"quotes\"'", 'mixed "quotes"'),
        ("'back\\slash'", "back\\slash"),
        ("'a\\\\'", "a\\\\"),
        ("'multi\nline'", "multi\nline"),
        ("0042", 42),
        ("+7", 7),
        ("-2147483648", -2147483648),
        ("2147483647", 2147483647),
        ("4-1", 3),
        ("4 - -1", 5),
        ("--1", 1),
        ("tRuE", True),
        ("False", False),
    ],
)
def test_literals(text: str, expected: Any) -> None:
    result = value_of(text)
    assert type(result) is type(expected) and result == expected


def test_keywords_and_identifiers_are_case_insensitive() -> None:
    assert value_of("ExIsTs SUBJECT and Subject lIkE 'ord%'", subject="order/1") is True
    assert value_of("int(hop) < INT(ttl)", hop="1", ttl="2") is True


def test_identifiers_may_contain_and_start_with_digits() -> None:
    assert value_of("1st = 'x' AND v2 = 2", **{"1st": "x", "v2": 2}) is True


def test_time_is_a_plain_string() -> None:
    assert value_of("time LIKE '2024-%'", time="2024-05-14T09:31:07Z") is True


# -- operators ---------------------------------------------------------------------


def test_logic_operators_share_one_precedence_level_left_to_right() -> None:
    # Spec 3.6 lists AND, OR and XOR on the same level: (true OR false) AND false.
    assert value_of("true OR false AND false") is False
    assert value_of("true OR (false AND false)") is True
    assert value_of("false AND true OR true") is True
    assert value_of("true XOR true OR true") is True


def test_unary_operators_bind_tighter_than_infix_operators() -> None:
    assert value_of("NOT false = false") is False  # (NOT false) = false
    assert value_of("-2 * 3 + 1") == -5
    assert value_of("NOT EXISTS subject") is True


def test_like_and_in_bind_tighter_than_comparison() -> None:
    assert value_of("type LIKE 'com.%' = true") is True
    assert value_of("2 IN (1, 2) = true AND 1 + 1 = 2") is True


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7 / 2", 3),
        ("-7 / 2", -3),
        ("7 / -2", -3),
        ("-7 % 2", -1),
        ("7 % -2", 1),
        ("2 + 3 * 4 - 6 / 2", 11),
        ("(2 + 3) * 4", 20),
        ("2147483647 - 1 + 1", 2147483647),
    ],
)
def test_integer_arithmetic(text: str, expected: int) -> None:
    assert value_of(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2147483647 + 1", 2147483647),
        ("-2147483648 - 1", -2147483648),
        ("65536 * 65536", 2147483647),
        ("-2147483648 / -1", 2147483647),
        ("-(-2147483648)", 2147483647),
        ("ABS(-2147483648)", 2147483647),
    ],
)
def test_overflow_saturates_and_reports_a_math_error(text: str, expected: int) -> None:
    result = evaluate(text)
    assert result.value == expected
    assert kinds(result) == ["math"]
    assert "32-bit" in str(result.errors[0])


def test_division_by_zero_reports_position_of_the_operator() -> None:
    result = evaluate("1 + 10 % 0")
    assert result.value == 0
    (error,) = result.errors
    assert isinstance(error, CesqlMathError)
    assert (error.line, error.column) == (1, 8)
    assert str(error) == "division by zero at line 1, column 8"


@pytest.mark.parametrize(
    ("text", "attributes", "expected"),
    [
        ("sequence = 10", {"sequence": "10"}, True),
        ("10 = sequence", {"sequence": "10"}, True),  # left cast to the right's type
        ("sequence = '10'", {"sequence": 10}, True),
        ("flag = 'TRUE'", {"flag": True}, False),  # true -> "true" != "TRUE"
        ("'TRUE' = flag", {"flag": True}, True),
        ("hop < ttl", {"hop": "9", "ttl": "10"}, True),  # integer, not string, order
        ("n + '5'", {"n": 5}, 10),
        ("count IN ('1', '2')", {"count": 2}, True),
        ("code IN (1, 2)", {"code": "2"}, True),
        ("a IN (b, 'x')", {"a": "7", "b": 7}, True),
        ("flag NOT IN ('false')", {"flag": True}, True),
        ("n LIKE '4_'", {"n": 42}, True),
    ],
)
def test_implicit_casts(text: str, attributes: dict[str, Any], expected: Any) -> None:
    assert value_of(text, **attributes) == expected


def test_implicit_integer_to_boolean_cast_is_refused() -> None:
    result = evaluate("NOT 10")
    assert result.value is True  # NOT (cast result false), as the TCK requires
    assert kinds(result) == ["cast"]
    assert "BOOL()" in str(result.errors[0])
    assert value_of("BOOL(10)") is True


def test_failed_cast_uses_the_zero_value_and_reports_it() -> None:
    result = evaluate("amount > 100", amount="lots")
    assert result.value is False
    (error,) = result.errors
    assert isinstance(error, CesqlCastError)
    assert (error.line, error.column) == (1, 1)
    assert str(error) == "cannot cast string 'lots' to Integer at line 1, column 1"


def test_like_patterns() -> None:
    assert value_of("type LIKE 'com.shop.%'") is True
    assert value_of("type LIKE '%.created'") is True
    assert value_of("type LIKE '%shop%'") is True
    assert value_of("type LIKE 'com_shop_order_created'") is True
    assert value_of("type LIKE 'com.shop'") is False
    assert value_of("v LIKE '100\\%'", v="100%") is True
    assert value_of("v LIKE '100\\%'", v="1000") is False
    assert value_of("v LIKE 'a\\_b'", v="axb") is False
    assert value_of("v LIKE 'a.c*'", v="a.c*") is True  # regex characters are literal
    assert value_of("v LIKE 'a.c*'", v="abc*") is False
    assert value_of("v LIKE 'a_c%'", v="a\nc\nd") is True  # wildcards match newlines
    assert value_of("v NOT LIKE '%x%'", v="abc") is True


def test_exists_is_true_for_required_attributes() -> None:
    expression = compile_expression("EXISTS id AND EXISTS source AND EXISTS specversion")
    assert expression.evaluate({}).value is True  # the event is assumed valid (spec 3.4.4)
    assert compile_expression("EXISTS region").evaluate(event(region="eu")).value is True
    assert compile_expression("EXISTS region").evaluate(event()).value is False


# -- functions ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("LENGTH('héllo')", 5),
        ("CONCAT('a', 1, TRUE)", "a1true"),
        ("CONCAT_WS('-', 'a', 'b')", "a-b"),
        ("LOWER('ÀB')", "àb"),
        ("UPPER('straße')", "STRASSE"),
        ("TRIM('\u2003\t x \n\u3000')", "x"),
        ("TRIM('\x1f x \x1f')", "\x1f x \x1f"),  # control characters are kept
        ("LEFT('abc', 0)", ""),
        ("RIGHT('abc', 0)", ""),
        ("RIGHT('abc', 1)", "c"),
        ("SUBSTRING('abcdef', 3, 100)", "cdef"),
        ("SUBSTRING('abcdef', -2)", "ef"),
        ("SUBSTRING('abc', 0, 5)", ""),
        ("ABS(-5) + ABS(5)", 10),
        ("INT('+12')", 12),
        ("INT('-0012')", -12),
        ("BOOL('FaLsE')", False),
        ("STRING(-3)", "-3"),
        ("IS_INT('42')", True),
        ("IS_INT('4.2')", False),
        ("IS_INT('2147483648')", False),
        ("IS_INT(TRUE)", True),
        ("IS_BOOL('True')", True),
        ("IS_BOOL('yes')", False),
        ("IS_BOOL(0)", True),
        ("IS_STRING(1)", True),
        ("length(concat('ab', 'c'))", 3),
    ],
)
def test_builtin_functions(text: str, expected: Any) -> None:
    result = value_of(text)
    assert type(result) is type(expected) and result == expected


@pytest.mark.parametrize(
    ("text", "expected", "error_type"),
    [
        ("INT('12a')", 0, CesqlCastError),
        ("INT(' 12')", 0, CesqlCastError),
        ("INT('٣')", 0, CesqlCastError),  # non-ASCII digits are not base-10 CESQL digits
        ("BOOL('yes')", False, CesqlCastError),
        ("LEFT('abc', -1)", "abc", CesqlFunctionEvaluationError),
        ("RIGHT('abc', -1)", "abc", CesqlFunctionEvaluationError),
        ("SUBSTRING('abc', 4)", "", CesqlFunctionEvaluationError),
        ("SUBSTRING('abc', 1, -1)", "", CesqlFunctionEvaluationError),
        ("NOPE(1)", False, CesqlMissingFunctionError),
        ("LENGTH('a', 'b')", False, CesqlMissingFunctionError),
        ("SUBSTRING('a')", False, CesqlMissingFunctionError),
    ],
)
def test_function_errors_are_reported_with_a_value(
    text: str, expected: Any, error_type: type[CesqlError]
) -> None:
    result = evaluate(text)
    assert type(result.value) is type(expected) and result.value == expected
    (error,) = result.errors
    assert type(error) is error_type
    assert (error.line, error.column) == (1, 1)


def test_missing_function_message_lists_the_overloads() -> None:
    (error,) = evaluate("SUBSTRING('a')").errors
    assert isinstance(error, CesqlMissingFunctionError)
    assert error.function == "SUBSTRING"
    assert "SUBSTRING/2, SUBSTRING/3" in str(error)


# -- errors are reported, never raised -----------------------------------------------


def test_missing_attribute_yields_the_zero_value_of_the_consumer() -> None:
    cases = {
        "region": False,
        "region = 'eu'": False,
        "region != 'eu'": False,
        "NOT region": False,
        "-region": 0,
        "region * 5": 0,
        "1 / region": 0,  # no MathError: the division never happens
        "region LIKE '%'": False,
        "region NOT LIKE '%'": False,
        "region IN ('eu')": False,
        "region NOT IN ('eu')": False,
        "'eu' IN (region, 'eu')": False,
        "LENGTH(region)": 0,
        "CONCAT('a', region)": "",
    }
    for text, expected in cases.items():
        result = evaluate(text)
        assert result.value == expected and type(result.value) is type(expected), text
        (error,) = result.errors
        assert isinstance(error, CesqlMissingAttributeError), text
        assert error.attribute == "region"


def test_failed_operand_makes_only_its_consumer_return_the_zero_value() -> None:
    # Spec 3.2: the sub-expression referencing the missing attribute is false;
    # the enclosing OR then computes normally.
    result = evaluate("(region = 'eu') OR true")
    assert result.value is True
    assert kinds(result) == ["missingAttribute"]
    result = evaluate("LENGTH(LEFT('abc', -1))")
    assert result.value == 0
    assert kinds(result) == ["functionEvaluation"]


def test_and_or_short_circuit_skips_errors_on_the_right() -> None:
    assert evaluate("false AND region = 1 / 0") == EvaluationResult(False, ())
    assert evaluate("true OR region = 1 / 0") == EvaluationResult(True, ())
    result = evaluate("true AND 1 / 0 = 0 AND region = 'x'")
    assert result.value is False
    assert kinds(result) == ["math"]


def test_complete_evaluation_collects_every_error() -> None:
    result = evaluate("INT(a) + INT('x') + 1 / 0")
    assert result.value == 0
    assert kinds(result) == ["missingAttribute", "cast", "math"]
    assert [(e.line, e.column) for e in result.errors] == [(1, 5), (1, 10), (1, 23)]


class ExplodingEvent(Mapping[str, Any]):
    """A mapping whose reads fail, as a broken adapter might."""

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("backend unavailable")

    def get(self, key: str, default: Any = None) -> Any:
        raise RuntimeError("backend unavailable")

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def test_failing_event_mapping_is_reported_as_a_generic_error() -> None:
    for text in ("region = 'eu'", "EXISTS region"):
        expression = compile_expression(text)
        result = expression.evaluate(ExplodingEvent())
        assert result.value is False
        assert kinds(result) == ["generic"]
        assert "backend unavailable" in str(result.errors[0])
        assert expression.matches(ExplodingEvent()) is False


def test_matches_is_true_only_for_an_error_free_true() -> None:
    assert compile_expression("(region = 'eu') OR true").matches(event()) is False
    assert compile_expression("NOT 10").matches(event()) is False
    assert compile_expression("'true'").matches(event()) is False  # not a Boolean
    assert compile_expression("1").matches(event()) is False
    assert compile_expression("region = 'eu'").matches(event(region="eu")) is True


def test_evaluation_errors_pickle_with_their_details() -> None:
    (error,) = evaluate("region").errors
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is CesqlMissingAttributeError
    assert (copy.attribute, copy.line, copy.column, str(copy)) == ("region", 1, 1, str(error))


# -- event values ------------------------------------------------------------------


def test_non_primitive_attribute_values_are_read_as_strings() -> None:
    when = dt.datetime(2024, 5, 14, 9, 31, 7, tzinfo=dt.UTC)
    assert value_of("time", time=when) == "2024-05-14T09:31:07+00:00"
    assert value_of("data", data=b"\x00\xff") == base64.b64encode(b"\x00\xff").decode()
    assert value_of("big", big=2**40) == str(2**40)  # not a 32-bit CloudEvents Integer
    assert value_of("ratio", ratio=0.5) == "0.5"


def test_none_valued_attribute_is_missing() -> None:
    result = evaluate("subject = 'x' OR EXISTS subject", subject=None)
    assert result.value is False
    assert kinds(result) == ["missingAttribute"]


# -- compile once ------------------------------------------------------------------


def test_evaluation_does_not_parse_again(monkeypatch: pytest.MonkeyPatch) -> None:
    expression = compile_expression(SHOP_FILTER)

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("evaluation must not parse")

    monkeypatch.setattr(lexer, "tokenize", forbidden)
    monkeypatch.setattr(parser, "parse", forbidden)
    monkeypatch.setattr(parser, "tokenize", forbidden)
    assert expression.matches(event(amount="250", region="eu")) is True


def test_one_expression_serves_many_events() -> None:
    expression = compile_expression(SHOP_FILTER)
    events = [
        event(type=f"com.{'shop' if n % 2 else 'blog'}.order", amount=str(n * 10), region="eu")
        for n in range(100)
    ] + [event(amount="500"), event(amount="huge", region="eu")]
    expected = [n % 2 == 1 and n * 10 > 100 for n in range(100)] + [False, False]
    assert [expression.matches(e) for e in events] == expected
    results = [expression.evaluate(e) for e in events]
    assert [r.value for r in results] == expected
    # No region: EXISTS is simply false. Amount "huge": a cast error.
    assert [kinds(r) for r in results[-2:]] == [[], ["cast"]]
    assert all(r.errors == () for r in results[:-1])


def test_constant_subexpressions_still_report_errors_every_time() -> None:
    expression = compile_expression("1 / 0 = 0")
    for _ in range(3):
        assert kinds(expression.evaluate(event())) == ["math"]


@pytest.mark.parametrize(
    ("attributes", "matches"),
    [
        ({"type": "com.shop.order", "amount": "101", "region": "eu"}, True),
        ({"type": "com.shop.order", "amount": 101, "region": "eu"}, True),
        ({"type": "com.shop.order", "amount": "100", "region": "eu"}, False),
        ({"type": "com.shop.order", "amount": "250"}, False),
        ({"type": "com.blog.post", "amount": "250", "region": "eu"}, False),
        ({"type": "com.shop.order", "region": "eu"}, False),
    ],
)
def test_typical_subscription_filter(attributes: dict[str, Any], matches: bool) -> None:
    expression = compile_expression(SHOP_FILTER)
    assert expression.matches(event(**attributes)) is matches
