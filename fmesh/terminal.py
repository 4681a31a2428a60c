"""Text from functions, made safe to print on a terminal.

A function's output is whatever its code (or an event it echoes) wrote: escape sequences
in it would drive the terminal of whoever reads the logs (set its title, clear the
screen, move the cursor over earlier lines, or, on some terminals, answer back as if
typed). `escape_controls` shows them as text instead, as `\\x1b`.
"""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls (0x9b is a one-character CSI), and the
# bidirectional overrides that make a line read other than it is.
CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def escape_controls(text: str) -> str:
    """`text` with every terminal control character but \\n and \\t written as `\\xNN` (or `\\uNNNN`)."""
    return CONTROLS.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
