"""`fmesh new` without a mesh: what it writes, what it keeps, and what it refuses."""

from __future__ import annotations

import os
import subprocess

from fmesh.deploy.manifest import load_manifest
from support import FMESH
from typer.testing import CliRunner

from fmesh.cli import app


def test_new_writes_a_function_and_keeps_the_manifest(tmp_path):
    manifest = tmp_path / "fmesh.yaml"
    before = "# mine\nfunctions:\n  old:  # first\n    external: true\n    on: [{type: x}]\n"
    manifest.write_text(before)
    made = subprocess.run([*FMESH, "new", "fresh-one"], capture_output=True, text=True, cwd=tmp_path,
                          env=os.environ, timeout=60)
    assert made.returncode == 0, made.stderr
    assert manifest.read_text().startswith(before)
    assert sorted(p.name for p in (tmp_path / "functions/fresh-one").iterdir()) == [
        "README.md", "handler.py", "test_fresh_one.py"]
    assert load_manifest(manifest).functions["fresh-one"].handler == "functions/fresh-one/handler.py:handle"


def test_new_refuses_in_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "functions/taken").mkdir(parents=True)
    manifest = tmp_path / "fmesh.yaml"
    manifest.write_text("functions:\n  there:\n    external: true\n")
    for args, problem, code in [(["Bad_Name"], "'Bad_Name' is not a function name", 2),
                                (["taken"], "functions/taken exists already", 1),
                                (["there"], "already a function named 'there'", 1),
                                (["ok", "--lang", "cobol"], "--lang must be one of python, node, command", 2)]:
        refused = CliRunner().invoke(app, ["new", *args, "-f", str(manifest)])
        assert refused.exit_code == code and isinstance(refused.exception, SystemExit)  # not a traceback
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and problem in lines[0], refused.stderr
    assert manifest.read_text() == "functions:\n  there:\n    external: true\n"
    assert sorted(p.name for p in (tmp_path / "functions").iterdir()) == ["taken"]
