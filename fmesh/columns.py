"""Plain aligned columns, as `kubectl get` prints them, fitted to a width.

To fit, headers are first abbreviated, then the columns least needed are dropped, one
at a time; the first column (the names) is never dropped, and no cell is ever cut: a
name shown is a name that can be typed back. Without a width (`--wide`) every column
is shown with its full header.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len

from fmesh.terminal import escape_controls

GAP = "  "
Row = dict[str, Any]


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[Row], Any]
    short: str | None = None   # the header when the table does not fit
    keep: int = 50             # the lowest goes first when it still does not fit
    wide: bool = False         # only with --wide
    right: bool = False        # numbers: aligned to the right


def lines(columns: Sequence[Column], rows: Sequence[Row], width: int | None = None) -> list[str]:
    """The table as lines: a header, then a line per row."""
    shown = [c for c in columns if width is None or not c.wide]
    cells = {id(c): [_text(c.value(row)) for row in rows] for c in shown}
    headers = {id(c): c.header for c in shown}
    if width is not None and _width(shown, headers, cells) > width:
        headers = {id(c): c.short or c.header for c in shown}
        while len(shown) > 1 and _width(shown, headers, cells) > width:
            shown.remove(min(shown[1:], key=lambda c: c.keep))
    sizes = _sizes(shown, headers, cells)
    table = [[headers[id(c)] for c in shown]] + [[cells[id(c)][i] for c in shown] for i in range(len(rows))]
    return [GAP.join(_pad(text, size, c.right) for text, size, c in zip(line, sizes, shown, strict=True)).rstrip()
            for line in table]


def _text(value: Any) -> str:
    return "-" if value is None else escape_controls(str(value))


def _sizes(shown: list[Column], headers: dict[int, str], cells: dict[int, list[str]]) -> list[int]:
    return [max(cell_len(headers[id(c)]), *(cell_len(text) for text in cells[id(c)])) for c in shown]


def _width(shown: list[Column], headers: dict[int, str], cells: dict[int, list[str]]) -> int:
    sizes = _sizes(shown, headers, cells)
    return sum(sizes) + len(GAP) * (len(sizes) - 1)


def _pad(text: str, size: int, right: bool) -> str:
    space = " " * (size - cell_len(text))
    return space + text if right else text + space


def shortened(text: str, width: int) -> str:
    """A line of prose (an error, not a name) cut to `width`, marked where it was cut."""
    text = escape_controls(text)
    return text if cell_len(text) <= width else text[: max(1, width - 1)] + "…"
