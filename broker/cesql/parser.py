"""Hand-written precedence-climbing parser for CESQL (spec sections 2 and 3.6).

Precedence, highest first (spec 3.6): function invocation; unary ``NOT`` and
``-``; ``LIKE``; ``EXISTS``; ``IN``; ``* / %``; ``+ -``; comparisons; and finally
``AND``, ``OR`` and ``XOR``, which share one level. Operators of equal
precedence associate to the left, so ``a OR b AND c`` means ``(a OR b) AND c``.
Unary operators bind tighter than every infix operator: ``NOT a = b`` means
``(NOT a) = b``, as in the reference ANTLR grammar.
"""

from __future__ import annotations

import re

from .casting import INT32_MAX, INT32_MIN
from .errors import CesqlParseError
from .lexer import Token, TokenKind, tokenize
from .nodes import (
    Binary,
    Call,
    Exists,
    Identifier,
    In,
    Like,
    Literal,
    Logical,
    Node,
    Unary,
    children,
)

__all__ = ["MAX_NESTING", "parse"]

#: Deepest sub-expression nesting accepted; keeps parsing, compiling and
#: evaluating far from Python's recursion limit.
MAX_NESTING = 200

_LOGIC, _COMPARISON, _ADDITIVE, _MULTIPLICATIVE, _IN, _LIKE = range(1, 7)
_OPERATOR_LEVELS = {
    "*": _MULTIPLICATIVE,
    "/": _MULTIPLICATIVE,
    "%": _MULTIPLICATIVE,
    "+": _ADDITIVE,
    "-": _ADDITIVE,
    **dict.fromkeys(("=", "!=", "<>", "<", "<=", ">", ">="), _COMPARISON),
}
_KEYWORD_LEVELS = {"AND": _LOGIC, "OR": _LOGIC, "XOR": _LOGIC, "LIKE": _LIKE, "IN": _IN}
_FUNCTION_NAME = re.compile(r"[A-Za-z][A-Za-z_]*")
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9]+")


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.index = 0
        self.depth = 0

    # -- token helpers -------------------------------------------------------

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.index + ahead, len(self.tokens) - 1)]

    def advance(self) -> Token:
        token = self.peek()
        self.index = min(self.index + 1, len(self.tokens) - 1)
        return token

    def unexpected(self, token: Token, expected: str) -> CesqlParseError:
        return CesqlParseError(
            f"unexpected {token.describe()}",
            line=token.line,
            column=token.column,
            hint=f"expected {expected}",
        )

    def expect(self, kind: TokenKind, expected: str) -> Token:
        token = self.advance()
        if token.kind is not kind:
            raise self.unexpected(token, expected)
        return token

    @staticmethod
    def is_keyword(token: Token, *words: str) -> bool:
        return token.kind is TokenKind.KEYWORD and token.value in words

    # -- grammar -------------------------------------------------------------

    def parse(self) -> Node:
        node = self.expression(_LOGIC)
        token = self.peek()
        if token.kind is not TokenKind.EOF:
            raise self.unexpected(token, "an operator or the end of the expression")
        return node

    def expression(self, min_level: int) -> Node:
        left = self.prefix()
        while (level := self.infix_level()) is not None and level >= min_level:
            left = self.infix(left, level)
        return left

    def infix_level(self) -> int | None:
        token = self.peek()
        if token.kind is TokenKind.OPERATOR:
            return _OPERATOR_LEVELS[token.text]
        if self.is_keyword(token, "NOT"):
            following = self.peek(1)
            if not self.is_keyword(following, "LIKE", "IN"):
                raise self.unexpected(following, "LIKE or IN after NOT")
            return _KEYWORD_LEVELS[following.text.upper()]
        if token.kind is TokenKind.KEYWORD:
            return _KEYWORD_LEVELS.get(token.text.upper())
        return None

    def infix(self, left: Node, level: int) -> Node:
        operator = self.advance()
        negated = self.is_keyword(operator, "NOT")
        keyword = str(self.advance().value if negated else operator.value)
        line, column = operator.line, operator.column
        if keyword == "LIKE":
            pattern = self.advance()
            if pattern.kind is not TokenKind.STRING:
                raise self.unexpected(pattern, "a string literal as the LIKE pattern")
            return Like(
                operand=left, pattern=str(pattern.value), negated=negated, line=line, column=column
            )
        if keyword == "IN":
            items = self.set_items()
            return In(operand=left, items=items, negated=negated, line=line, column=column)
        right = self.expression(level + 1)
        if keyword in ("AND", "OR"):
            if isinstance(left, Logical) and left.operator == keyword:
                # Left-associative chains stay flat: (a AND b) AND c is one node.
                operands = (*left.operands, right)
                return Logical(
                    operator=keyword, operands=operands, line=left.line, column=left.column
                )
            return Logical(operator=keyword, operands=(left, right), line=line, column=column)
        return Binary(operator=keyword, left=left, right=right, line=line, column=column)

    def prefix(self) -> Node:
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise _too_deep(self.peek())
            return self.prefix_unchecked(self.advance())
        finally:
            self.depth -= 1

    def prefix_unchecked(self, token: Token) -> Node:
        where = {"line": token.line, "column": token.column}
        kind = token.kind
        if kind is TokenKind.STRING:
            return Literal(value=str(token.value), **where)
        if kind is TokenKind.INTEGER:
            return self.integer(token, token)
        if kind is TokenKind.WORD:
            if self.peek().kind is TokenKind.LPAREN:
                return self.call(token)
            return Identifier(name=self.attribute_name(token), **where)
        if kind is TokenKind.LPAREN:
            node = self.expression(_LOGIC)
            self.expect(TokenKind.RPAREN, "')'")
            return node
        if kind is TokenKind.OPERATOR and token.text in ("-", "+"):
            return self.signed(token)
        if self.is_keyword(token, "TRUE", "FALSE"):
            return Literal(value=token.value == "TRUE", **where)
        if self.is_keyword(token, "NOT"):
            return Unary(operator="NOT", operand=self.prefix(), **where)
        if self.is_keyword(token, "EXISTS"):
            return Exists(name=self.attribute_name(self.advance(), after="EXISTS"), **where)
        raise self.unexpected(token, "an expression")

    def signed(self, sign: Token) -> Node:
        """A sign directly followed by digits is part of an integer literal (spec 2.2).

        This is what lets ``-2147483648`` be written although 2147483648 alone
        is out of range. Otherwise ``-`` is the negation operator; ``+`` has no
        unary operator form.
        """
        following = self.peek()
        if following.kind is TokenKind.INTEGER and following.start == sign.end:
            return self.integer(self.advance(), sign)
        if sign.text == "+":
            raise self.unexpected(sign, "an expression")
        return Unary(operator="-", operand=self.prefix(), line=sign.line, column=sign.column)

    def integer(self, digits: Token, first: Token) -> Literal:
        value = digits.value if isinstance(digits.value, int) else None
        if value is not None and first.text == "-":
            value = -value
        if value is None or not INT32_MIN <= value <= INT32_MAX:
            text = first.text + digits.text if first is not digits else digits.text
            raise CesqlParseError(
                f"integer literal {text} is out of range",
                line=first.line,
                column=first.column,
                hint=f"integers must lie between {INT32_MIN} and {INT32_MAX}",
            )
        return Literal(value=value, line=first.line, column=first.column)

    def attribute_name(self, token: Token, after: str | None = None) -> str:
        if token.kind is not TokenKind.WORD:
            expected = f"an attribute name after {after}" if after else "an attribute name"
            raise self.unexpected(token, expected)
        if _ATTRIBUTE_NAME.fullmatch(token.text) is None:
            raise CesqlParseError(
                f"invalid attribute name {token.text!r}",
                line=token.line,
                column=token.column,
                hint="attribute names contain only letters and digits",
            )
        # Keywords are case-insensitive and CloudEvents attribute names are
        # lower-case only, so any spelling addresses the lower-case attribute.
        return token.text.lower()

    def call(self, name: Token) -> Call:
        if _FUNCTION_NAME.fullmatch(name.text) is None:
            raise CesqlParseError(
                f"invalid function name {name.text!r}",
                line=name.line,
                column=name.column,
                hint="function names contain only letters and underscores",
            )
        self.advance()  # "("
        args: list[Node] = []
        if self.peek().kind is TokenKind.RPAREN:
            self.advance()
        else:
            args = self.comma_list("function argument")
        return Call(name=name.text.upper(), args=tuple(args), line=name.line, column=name.column)

    def set_items(self) -> tuple[Node, ...]:
        self.expect(TokenKind.LPAREN, "'(' opening the IN set")
        if self.peek().kind is TokenKind.RPAREN:
            raise self.unexpected(self.peek(), "an expression (an IN set cannot be empty)")
        return tuple(self.comma_list("set element"))

    def comma_list(self, what: str) -> list[Node]:
        """Parse ``expr (, expr)* )`` after an opening parenthesis."""
        items: list[Node] = []
        while True:
            if self.peek().kind is TokenKind.EOF:
                raise self.unexpected(self.peek(), f"a {what} or ')'")
            items.append(self.expression(_LOGIC))
            separator = self.advance()
            if separator.kind is TokenKind.RPAREN:
                return items
            if separator.kind is not TokenKind.COMMA:
                raise self.unexpected(separator, "',' or ')'")


def _too_deep(node: Node | Token) -> CesqlParseError:
    return CesqlParseError(
        "expression is nested too deeply",
        line=node.line,
        column=node.column,
        hint=f"at most {MAX_NESTING} levels are supported",
    )


def _check_nesting(root: Node) -> None:
    """Reject trees deeper than MAX_NESTING (long left-deep chains like ``1+1+...``)."""
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            raise _too_deep(node)
        stack.extend((child, depth + 1) for child in children(node))


def parse(text: str) -> Node:
    """Parse expression text into an AST.

    Raises :class:`CesqlParseError` with the 1-based line and column of the
    first problem.
    """
    root = _Parser(text).parse()
    _check_nesting(root)
    return root
