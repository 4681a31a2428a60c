"""How a mesh starts and stops: one owner per data dir, a port checked before anything is
written, signals that stop it within its grace, and no secret on any command line."""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from support import FMESH, ROOT, Mesh, free_port, run_cli, wait_for, write_manifest


def up(data_dir: Path, port: int, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`fmesh up` that is expected to give up on its own, quickly."""
    return run_cli(["up", "--port", str(port), "--data-dir", str(data_dir), *args], env or dict(os.environ),
                   check=False, timeout=20)


def snapshot(mesh: Mesh) -> tuple:
    """What a second `fmesh up` must not change: deployed resources and the function logs."""
    logs = sorted((p.name, p.read_bytes()) for p in (mesh.data_dir / "logs").glob("*"))
    return mesh.api("GET", "/v1/functions").json(), mesh.api("GET", "/v1/subscriptions").json(), logs


@pytest.mark.parametrize("same_port", [True, False], ids=["same-port", "other-port"])
def test_a_second_up_on_the_same_data_dir_is_refused(mesh_factory, tmp_path, same_port):
    out = tmp_path / "seen.txt"
    first = mesh_factory().start("-f", str(write_manifest(tmp_path, f"""
functions:
  append:
    handler: {{fixtures}}/append/handler.py:handle
    on: [{{{{type: t}}}}]
    env: {{{{APPEND_TO: "{out}"}}}}
""")))
    first.cli("send", "--type", "t", "--source", "/s")
    wait_for(lambda: out.exists(), 15, message="the first mesh to deliver")
    before = snapshot(first)
    (tmp_path / "other").mkdir()
    other = write_manifest(tmp_path / "other", "functions:\n  hello:\n"
                           "    handler: {functions}/hello/handler.py:handle\n")
    port = first.port if same_port else free_port()
    second = up(first.data_dir, port, "-f", str(other), env=first.env())
    assert second.returncode != 0
    assert second.stderr.strip() == (f"error: data dir {first.data_dir} is in use by pid {first.process.pid} "
                                     f"(port {first.port})"), second.stderr
    assert first.healthy() and snapshot(first) == before


def test_up_on_a_taken_port_names_it_and_writes_nothing(tmp_path):
    data_dir = tmp_path / "fresh"
    env = {k: v for k, v in os.environ.items() if k != "FMESH_TOKEN"}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = up(data_dir, port, env=env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"port {port}" in lines[0] and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (data_dir / "token").exists() and not list(data_dir.glob("mesh.db*"))
    assert not (data_dir / "logs").exists()


def read_line(process: subprocess.Popen, timeout: float) -> str:
    """The next line `process` prints, or fail the test after `timeout`."""
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"no output from {process.args} in {timeout}s"
    return process.stdout.readline()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_mesh_within_its_grace(mesh_factory, tmp_path, sig):
    grace = 3.0
    mesh = mesh_factory(extra=["--shutdown-grace", f"{grace:g}s"]).start("-f", str(write_manifest(tmp_path, """
functions:
  slow:
    handler: {fixtures}/slow/handler.py:handle
    on: [{{type: slow}}]
    timeout: 60s
""")))
    mesh.cli("send", "--type", "slow", "--source", "/s", "--data", '{"sleep": 60}')
    wait_for(lambda: mesh.status("slow").get("inflight") == 1, 15, message="the slow event to be in flight")
    follower = subprocess.Popen([*FMESH, "logs", "-f", "slow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=mesh.env(), cwd=ROOT)
    try:
        read_line(follower, 15)  # a past line: the follower is connected
        started = time.monotonic()
        mesh.process.send_signal(sig)
        code = mesh.process.wait(grace + 5)
        elapsed = time.monotonic() - started
        follower_code = follower.wait(10)
        follower_err = follower.stderr.read()
    finally:
        follower.kill()
        follower.wait()
    assert elapsed < grace + 1.5, f"took {elapsed:.1f}s to stop:\n{mesh.log()}"
    assert code == 0, mesh.log()
    stopped = [line for line in mesh.log().splitlines() if line.startswith("fmesh: stopped")]
    assert len(stopped) == 1 and f"on {sig.name}" in stopped[0], mesh.log()
    assert "Traceback" not in mesh.log()
    assert follower_code == 1 and follower_err.startswith("error: ") and mesh.url in follower_err, follower_err
    assert len(follower_err.strip().splitlines()) == 1 and "Traceback" not in follower_err
    mesh.start()  # the unfinished delivery was stored, not lost: the next start takes it again
    wait_for(lambda: mesh.status("slow").get("inflight") == 1, 15, message="the slow event to be delivered again")


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
    # Nor in what a replica or the zygote started with (/proc/<pid>/environ, which a
    # handler can read whatever os.environ says): only what the function declared, in os.environ.
    for pid in started - {mesh.process.pid}:
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read()
        except OSError:
            continue  # gone meanwhile
        assert token.encode() not in environ and api_key.encode() not in environ, processes.get(pid)
