"""How the CLI and the mesh say counts and sizes: "1 file", "2 files", "12.6 MB"."""

from __future__ import annotations


def plural(count: int, word: str, many: str | None = None) -> str:
    """`count` and `word`, or its plural (`many`, else the word with an "s"): 1 attempt, 2 attempts."""
    return f"{count:,} {noun(count, word, many)}"


def noun(count: int, word: str, many: str | None = None) -> str:
    """`word` as it goes with `count`: "dead letter 4 kept", "dead letters 4, 5 kept"."""
    return word if count == 1 else many or word + "s"


def size(count: int) -> str:
    """A size in bytes as people read it: 950 bytes, 12.6 KB, 3.0 MB (decimal units, as disks are sold)."""
    if count < 1000:
        return plural(count, "byte")
    value, unit = count / 1000, "KB"
    for bigger in ("MB", "GB"):
        if value < 999.95:  # what still shows as at most 999.9
            break
        value, unit = value / 1000, bigger
    return f"{value:.1f} {unit}"
