"""What an idle mesh does not load until something needs it: each costs memory in every
mesh (bench/footprint.py), and most meshes never use it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SERVES = "import fmesh.deploy.server"
# A None entry is a module blocked, not loaded (fmesh.deploy blocks httpx._main).
LOADED = "import json, sys; print(json.dumps(sorted(m for m, module in sys.modules.items() if module)))"


def loaded_after(code: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", f"{code}\n{LOADED}"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("module, needed_by", [
    ("fmesh.broker.cesql", "a CESQL filter"),
    ("pathspec", "packing a function's folder"),
    ("httpx", "an HTTP sink or a bridge"),
    ("croniter", "a timer with a cron"),
    ("opentelemetry.sdk", "tracing to an OTLP endpoint"),
])
def test_the_mesh_starts_without(module, needed_by):
    assert module not in loaded_after(SERVES), f"the mesh loads {module} at start; only {needed_by} needs it"


def test_a_cesql_filter_loads_the_compiler_and_an_exact_one_does_not():
    exact = "from fmesh.broker.filters import compile_dialect\ncompile_dialect({'exact': {'type': 'a'}}, 'f')"
    assert "fmesh.broker.cesql" not in loaded_after(exact)
    cesql = "from fmesh.broker.filters import compile_dialect\nf = compile_dialect({'cesql': \"type = 'a'\"}, 'f')\n" \
            "assert f.test({'type': 'a'}) and f.conditions"
    assert "fmesh.broker.cesql" in loaded_after(cesql)
