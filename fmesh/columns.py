"""Plain aligned columns, as `kubectl get` prints them, fitted to a width.

To fit, the optional columns (`keep` under 50) go first, least needed first; then headers
are abbreviated; then the other columns go, one at a time. The first column (the names)
is never dropped, and no cell is ever cut: a
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
OPTIONAL = 50  # columns kept less than this go before headers are abbreviated: readable headers come first
Row = dict[str, Any]


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[Row], Any]
    short: str | None = None   # the header when the table does not fit
    keep: int = OPTIONAL       # the lowest goes first when it does not fit
    wide: bool = False         # only with --wide
    right: bool = False        # numbers: aligned to the right


def lines(columns: Sequence[Column], rows: Sequence[Row], width: int | None = None) -> list[str]:
    """The table as lines: a header, then a line per row."""
    shown = [c for c in columns if width is None or not c.wide]
    cells = {id(c): [_text(c.value(row)) for row in rows] for c in shown}
    headers = {id(c): c.header for c in shown}
    if width is not None:
        _drop(shown, headers, cells, width, below=OPTIONAL)
        if _width(shown, headers, cells) > width:
            headers = {id(c): c.short or c.header for c in shown}
        _drop(shown, headers, cells, width)
    sizes = _sizes(shown, headers, cells)
    table = [[headers[id(c)] for c in shown]] + [[cells[id(c)][i] for c in shown] for i in range(len(rows))]
    return [GAP.join(_pad(text, size, c.right) for text, size, c in zip(line, sizes, shown, strict=True)).rstrip()
            for line in table]


def _drop(shown: list[Column], headers: dict[int, str], cells: dict[int, list[str]], width: int,
          below: int | None = None) -> None:
    """Drop the least needed columns (those kept less than `below`, if given) until it fits."""
    while _width(shown, headers, cells) > width:
        droppable = [c for c in shown[1:] if below is None or c.keep < below]
        if not droppable:
            return
        shown.remove(min(droppable, key=lambda c: c.keep))


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


def shortened(text: str, width: int | None) -> str:
    """A line of prose (an error, not a name) cut to `width` (None: whole), marked where it was cut."""
    text = escape_controls(text)
    return text if width is None or cell_len(text) <= width else text[: max(1, width - 1)] + "…"
