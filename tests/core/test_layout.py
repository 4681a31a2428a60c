"""The layout holds: the shared core imports no part, and the control plane sees a node
only through its operations (so any store, and any number of nodes, can sit behind it)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("fmesh.broker", "fmesh.runtime", "fmesh.triggers", "fmesh.deploy", "fmesh.functions")
# The CLI starts the parts, importing them only when a command runs.
def is_entry_point(path: Path) -> bool:
    return path.name.startswith("cli")  # cli.py and the modules of its commands


def imports(path: Path, top_level_only: bool) -> set[str]:
    # A regex, not ast: on 3.11 ast.parse can fail with a SystemError once another test
    # has moved the recursion limit (hypothesis does).
    indent = "" if top_level_only else r"[ \t]*"
    pattern = re.compile(rf"^{indent}(?:from|import)[ \t]+([\w.]+)", re.MULTILINE)
    return set(pattern.findall(path.read_text()))


def test_the_core_imports_no_part():
    for path in sorted((ROOT / "fmesh").rglob("*.py")):
        lazily = is_entry_point(path)
        wrong = {m for m in imports(path, top_level_only=lazily) if m.startswith(PARTS)}
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_the_control_plane_uses_node_operations_not_the_node():
    for name in ("api.py", "control.py", "resources.py", "metrics.py"):
        source = (ROOT / "deploy" / name).read_text()
        assert "fmesh.deploy.node" not in source, f"deploy/{name} imports the node itself"
        for reach in ("log", "broker", "runtime", "store", "gate"):
            assert not re.search(rf"\bnode\.{reach}\b(?!_)", source), f"deploy/{name} reaches into node.{reach}"
