"""Compilation of LIKE patterns (spec 3.4.3) into string predicates.

``%`` matches any run of characters, ``_`` exactly one character, and ``\\%`` /
``\\_`` match a literal ``%`` / ``_``. A backslash before any other character (or
at the end) is an ordinary character: the spec defines escapes for the two
wildcards only, and the TCK requires ``'ab\\c' LIKE 'ab\\c'`` to be true.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from operator import methodcaller

__all__ = ["compile_like", "literal_affixes", "simple_shape"]

_ANY_RUN = object()  # "%"
_ANY_ONE = object()  # "_"

Part = str | object


def _tokenize(pattern: str) -> list[Part]:
    """Split a pattern into literal text runs and wildcard markers."""
    parts: list[Part] = []
    literal: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and pattern[index + 1 : index + 2] in ("%", "_"):
            literal.append(pattern[index + 1])
            index += 2
            continue
        if char in "%_":
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(_ANY_RUN if char == "%" else _ANY_ONE)
        else:
            literal.append(char)
        index += 1
    if literal:
        parts.append("".join(literal))
    return parts


def _fast_path(parts: list[Part]) -> Callable[[str], bool] | None:
    """A str-method predicate for the common exact/prefix/suffix/contains shapes."""
    if _ANY_ONE in parts:
        return None
    texts = [part for part in parts if isinstance(part, str)]
    if len(texts) > 1:
        return None
    text = texts[0] if texts else ""
    shape = tuple(part is _ANY_RUN for part in parts)
    if shape in ((), (False,)):
        return text.__eq__
    if shape in ((True,), (True, True)):
        return lambda value: True
    # methodcaller keeps the per-event call in C.
    if shape == (False, True):
        return methodcaller("startswith", text)
    if shape == (True, False):
        return methodcaller("endswith", text)
    if shape == (True, False, True):
        return methodcaller("__contains__", text)
    return None


def _regex(parts: list[Part]) -> Callable[[str], bool]:
    pieces = []
    for part in parts:
        if isinstance(part, str):
            pieces.append(re.escape(part))
        else:
            pieces.append(".*" if part is _ANY_RUN else ".")
    compiled = re.compile("".join(pieces), re.DOTALL)
    return lambda value: compiled.fullmatch(value) is not None


def literal_affixes(pattern: str) -> tuple[str | None, str, str]:
    """What every matching value is, starts and ends with: ``(the whole value when the
    pattern has no wildcard else None, the literal text before the first wildcard, the
    literal text after the last)``, escapes resolved."""
    parts = _tokenize(pattern)
    if all(isinstance(part, str) for part in parts):
        return "".join(parts), "", ""  # type: ignore[arg-type]
    prefix, suffix = parts[0], parts[-1]
    return None, prefix if isinstance(prefix, str) else "", suffix if isinstance(suffix, str) else ""


def simple_shape(pattern: str) -> tuple[str, str] | None:
    """`("exact", text)`, `("prefix", text)` or `("suffix", text)` when the pattern means
    no more than that (`'abc'`, `'abc%'`, `'%abc'`), escapes resolved; None otherwise."""
    parts = _tokenize(pattern)
    if all(isinstance(part, str) for part in parts):
        return "exact", "".join(parts)  # type: ignore[arg-type]
    if len(parts) == 2 and parts[1] is _ANY_RUN and isinstance(parts[0], str):
        return "prefix", parts[0]
    if len(parts) == 2 and parts[0] is _ANY_RUN and isinstance(parts[1], str):
        return "suffix", parts[1]
    return None


def compile_like(pattern: str) -> Callable[[str], bool]:
    """Turn a LIKE pattern into a predicate ``matches(value: str) -> bool``."""
    parts = _tokenize(pattern)
    return _fast_path(parts) or _regex(parts)
