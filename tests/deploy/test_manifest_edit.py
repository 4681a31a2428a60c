"""Adding a function to a manifest's text (`fmesh new`): the rest stays exactly as written."""

from __future__ import annotations

import pytest
from fmesh.deploy.manifest import parse_manifest
from fmesh.deploy.manifest_edit import add_function

from fmesh.errors import ManifestError

ENTRY = ["handler: functions/new/handler.py:handle", "on: [{type: com.example.new}]"]

COMMENTED = """\
# our mesh
functions:
  # the first one
  old:
    handler: functions/old/handler.py:handle   # keep this comment
    on:
      - type: com.example.old

# triggers feed old
triggers:
  tick: {timer: {every: 1h, type: com.example.old}}
"""


def test_an_entry_goes_at_the_end_of_functions_and_nothing_else_changes():
    text = add_function(COMMENTED, "new", ENTRY)
    old_lines = COMMENTED.splitlines()
    new_lines = text.splitlines()
    assert new_lines[:7] == old_lines[:7] and new_lines[10:] == old_lines[7:]
    assert new_lines[7:10] == ["  new:", "    handler: functions/new/handler.py:handle",
                               "    on: [{type: com.example.new}]"]
    manifest = parse_manifest(text)
    assert list(manifest.functions) == ["old", "new"] and list(manifest.triggers) == ["tick"]


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "subscriptions: {}", "functions: {}  # none yet\n"])
def test_a_functions_section_is_made_when_there_is_none(text):
    added = add_function(text, "new", ENTRY)
    assert list(parse_manifest(added).functions) == ["new"]
    assert all(kept in added for kept in ("# nothing yet", "# none yet", "subscriptions: {}") if kept in text)


def test_the_entry_follows_the_manifests_own_indentation():
    text = "functions:\n    old:\n        handler: a/h.py:handle\n        env:\n          X: |\n            two\n" \
           "            lines\n\n"
    added = add_function(text, "new", ENTRY)
    assert "\n    new:\n        handler: functions/new/handler.py:handle\n" in added
    assert parse_manifest(added).functions["old"].env == {"X": "two\nlines\n"}


@pytest.mark.parametrize(("text", "problem"), [
    ("functions:\n  new:\n    handler: a/h.py:handle\n", "already a function named 'new'"),
    ("functions: {old: {handler: a/h.py:handle}}\n", "flow style"),
    ("functions: [\n", "not valid YAML"),
])
def test_refusals_say_why(text, problem):
    with pytest.raises(ManifestError, match=problem):
        add_function(text, "new", ENTRY)
