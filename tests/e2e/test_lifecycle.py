"""How a mesh starts and stops: no secret on any command line."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from support import wait_for, write_manifest


def cmdlines() -> dict[int, str]:
    """Every process's command line that this user can read, by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                pass  # it ended meanwhile
    return found


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(root: int, pids: set[int]) -> set[int]:
    parents = {pid: parent_of(pid) for pid in pids}
    found, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return found - {root}


@pytest.mark.parametrize("launcher", ["zygote", "subprocess"])
def test_no_secret_is_on_any_command_line(mesh_factory, tmp_path, launcher):
    token, api_key = f"token-{secrets.token_hex(16)}", f"key-{secrets.token_hex(16)}"
    mesh = mesh_factory(token=token, extra=["--launcher", launcher])
    mesh.env = (lambda base: lambda **more: {**base(**more), "API_KEY": api_key})(mesh.env)
    out = tmp_path / "replica.json"
    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "handler.py").write_text(
        "import json, os\n"
        "def handle(event):\n"
        f"    open({str(out)!r}, 'w').write(json.dumps([os.getpid(), os.environ['API_KEY']]))\n")
    mesh.start("-f", str(write_manifest(tmp_path, """
functions:
  keyed:
    handler: fn/handler.py:handle
    on: [{{type: k}}]
    scale: {{min: 1, max: 2}}
    secrets:
      API_KEY: {{env: API_KEY}}
""")))
    mesh.cli("send", "--type", "k", "--source", "/s")
    wait_for(lambda: out.exists() and out.read_text(), 15, message="the replica to run")
    replica, seen_key = json.loads(out.read_text())
    assert seen_key == api_key  # the secret did reach the function, through its environment
    processes = cmdlines()
    started = descendants(mesh.process.pid, set(processes))
    assert replica in started, (replica, {p: processes[p] for p in started})
    if launcher == "zygote":
        assert any("fmesh.runtime.zygote" in processes[p] for p in started)
    leaks = {pid: line for pid, line in processes.items() if token in line or api_key in line}
    assert leaks == {}
