"""escape_controls: what may reach a terminal from a function's output."""

from __future__ import annotations

import pytest

from fmesh.terminal import escape_controls


@pytest.mark.parametrize(("text", "shown"), [
    ("\x1b]0;pwned\x07\x1b[2J", r"\x1b]0;pwned\x07\x1b[2J"),   # OSC title, bell, clear screen
    ("\x00\x08\x0b\x0c\r\x1f\x7f", r"\x00\x08\x0b\x0c\x0d\x1f\x7f"),  # C0 and DEL
    ("\x85\x9b31m\x9d", r"\x85\x9b31m\x9d"),                    # C1: NEL, CSI, OSC
    ("abc\u202edcba", r"abc\u202edcba"),                        # a right-to-left override
    ("tab\tnew\nline", "tab\tnew\nline"),                       # kept
    ("café ✓ 日本 \\x1b", "café ✓ 日本 \\x1b"),                   # text, and a backslash, unchanged
])
def test_escape_controls(text, shown):
    assert escape_controls(text) == shown
