"""Plain columns fitted to a width, and counts said as people say them."""

from __future__ import annotations

from fmesh.columns import Column, lines, shortened
from fmesh.wording import plural, size

COLUMNS = [Column("NAME", lambda r: r["name"]),
           Column("PENDING", lambda r: r["pending"], "PEND", keep=80, right=True),
           Column("DELIVERED", lambda r: r["delivered"], "DONE", keep=60, right=True),
           Column("VERSION", lambda r: r["version"], keep=10),
           Column("LAST ERROR", lambda r: r["error"], wide=True)]
ROWS = [{"name": "hello", "pending": 3, "delivered": 120, "version": "1f0e2a3b4c5d", "error": None},
        {"name": "x" * 40, "pending": 12345, "delivered": 7, "version": "abcdef012345", "error": "boom\x1b[2J"}]


def test_columns_are_aligned_and_numbers_right_aligned():
    assert lines(COLUMNS, ROWS, 200) == [
        "NAME                                      PENDING  DELIVERED  VERSION",
        "hello                                           3        120  1f0e2a3b4c5d",
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx    12345          7  abcdef012345"]


def test_to_fit_optional_columns_go_then_headers_are_abbreviated_then_more_go_never_the_names():
    assert lines(COLUMNS, ROWS, 70)[0].split() == ["NAME", "PENDING", "DELIVERED"]
    assert lines(COLUMNS, ROWS, 55)[0].split() == ["NAME", "PEND", "DONE"]
    assert lines(COLUMNS, ROWS, 50)[0].split() == ["NAME", "PEND"]
    assert lines(COLUMNS, ROWS, 10)[2] == "x" * 40  # a name is never cut


def test_wide_shows_every_column_and_escapes_what_came_from_outside():
    wide = lines(COLUMNS, ROWS, None)
    assert wide[0].endswith("  LAST ERROR") and wide[1].endswith("-") and wide[2].endswith("boom\\x1b[2J")
    assert shortened("a long error message", 10) == "a long er…"


def test_counts_and_sizes_read_as_people_say_them():
    assert [plural(n, "file") for n in (0, 1, 2, 1000)] == ["0 files", "1 file", "2 files", "1,000 files"]
    assert plural(1, "attempt") == "1 attempt" and plural(3, "entry", "entries") == "3 entries"
    assert [size(n) for n in (1, 999, 1000, 12_600_000)] == ["1 byte", "999 bytes", "1.0 KB", "12.6 MB"]
