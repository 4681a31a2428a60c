"""Tokenizer for CESQL expressions (spec section 2)."""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass

from .errors import CesqlParseError

__all__ = ["KEYWORDS", "Token", "TokenKind", "tokenize"]

KEYWORDS = frozenset({"AND", "OR", "XOR", "NOT", "LIKE", "EXISTS", "IN", "TRUE", "FALSE"})

_OPERATORS_2 = ("!=", "<>", "<=", ">=")
_OPERATORS_1 = "=<>+-*/%"
_PUNCTUATION = {"(": "LPAREN", ")": "RPAREN", ",": "COMMA"}
# The reference grammar skips exactly these; other Unicode spaces are rejected.
_WHITESPACE = " \t\r\n"
_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


class TokenKind(enum.Enum):
    """Lexical categories."""

    LPAREN = "("
    RPAREN = ")"
    COMMA = ","
    OPERATOR = "operator"
    STRING = "string"
    INTEGER = "integer"
    KEYWORD = "keyword"
    WORD = "word"  # identifier or function name; the parser tells them apart
    EOF = "end"


@dataclass(frozen=True, slots=True)
class Token:
    """One token.

    ``value`` is the decoded text of a string, the unsigned value of an integer
    (``None`` when it has more than ten significant digits), or the upper-cased
    keyword.
    """

    kind: TokenKind
    text: str
    value: str | int | None
    start: int
    end: int
    line: int
    column: int

    def describe(self) -> str:
        """How the token is named in error messages."""
        if self.kind is TokenKind.EOF:
            return "end of expression"
        if self.kind is TokenKind.STRING:
            return f"string literal {self.text}"
        return f"token {self.text!r}"


class _Positions:
    """Maps string offsets to 1-based (line, column)."""

    def __init__(self, text: str) -> None:
        self._line_starts = [0] + [i + 1 for i, char in enumerate(text) if char == "\n"]

    def at(self, offset: int) -> tuple[int, int]:
        line = bisect.bisect_right(self._line_starts, offset)
        return line, offset - self._line_starts[line - 1] + 1


class _Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.positions = _Positions(text)
        self.tokens: list[Token] = []

    def error(self, problem: str, offset: int, hint: str | None = None) -> CesqlParseError:
        line, column = self.positions.at(offset)
        return CesqlParseError(problem, line=line, column=column, hint=hint)

    def emit(self, kind: TokenKind, start: int, end: int, value: str | int | None = None) -> None:
        line, column = self.positions.at(start)
        text = self.text[start:end]
        self.tokens.append(Token(kind, text, value, start, end, line, column))

    def run(self) -> list[Token]:
        index = 0
        text = self.text
        while index < len(text):
            char = text[index]
            if char in _WHITESPACE:
                index += 1
            elif char in _PUNCTUATION:
                self.emit(TokenKind[_PUNCTUATION[char]], index, index + 1)
                index += 1
            elif text.startswith(_OPERATORS_2, index):
                self.emit(TokenKind.OPERATOR, index, index + 2, text[index : index + 2])
                index += 2
            elif char in _OPERATORS_1:
                self.emit(TokenKind.OPERATOR, index, index + 1, char)
                index += 1
            elif char in "'\"":
                index = self.string(index)
            elif char in _WORD_CHARS:
                index = self.word(index)
            else:
                raise self.error(f"unexpected character {char!r}", index)
        self.emit(TokenKind.EOF, len(text), len(text))
        return self.tokens

    def string(self, start: int) -> int:
        """Scan a quoted string literal.

        As in the reference grammar, a backslash always pairs with the next
        character; the pair ``\\<quote>`` decodes to the quote, every other pair
        is kept verbatim (so LIKE patterns still see their ``\\%`` escapes).
        """
        quote = self.text[start]
        decoded: list[str] = []
        index = start + 1
        while index < len(self.text):
            char = self.text[index]
            if char == quote:
                self.emit(TokenKind.STRING, start, index + 1, "".join(decoded))
                return index + 1
            if char == "\\" and index + 1 < len(self.text):
                following = self.text[index + 1]
                decoded.append(following if following == quote else char + following)
                index += 2
            else:
                decoded.append(char)
                index += 1
        raise self.error("unterminated string literal", start, f"missing closing {quote}")

    def word(self, start: int) -> int:
        """Scan a run of letters, digits and underscores: integer, keyword or name."""
        index = start
        while index < len(self.text) and self.text[index] in _WORD_CHARS:
            index += 1
        word = self.text[start:index]
        if word.isdigit():
            # Far too long to be a 32-bit value: skip int(), which refuses huge inputs.
            digits = word.lstrip("0")
            self.emit(TokenKind.INTEGER, start, index, int(word) if len(digits) <= 10 else None)
        elif word.upper() in KEYWORDS:
            self.emit(TokenKind.KEYWORD, start, index, word.upper())
        else:
            self.emit(TokenKind.WORD, start, index, word)
        return index


def tokenize(text: str) -> list[Token]:
    """Split expression text into tokens, ending with an EOF token.

    Raises :class:`CesqlParseError` for characters outside the language and for
    unterminated string literals.
    """
    return _Lexer(text).run()
