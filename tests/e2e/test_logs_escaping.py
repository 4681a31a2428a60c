"""`fmesh logs` (and the tables of dead letters) never let a function's output drive the
terminal of whoever reads it."""

from __future__ import annotations

import queue
import subprocess
import threading

from support import FMESH, ROOT, wait_for, write_manifest

# Sets the terminal's title, rings the bell, clears the screen; then returns the cursor
# to overwrite the line, and a C1 CSI (one character).
PAYLOAD = "\x1b]0;pwned\x07\x1b[2J\rfake\x9b31m"
ESCAPED = r"\x1b]0;pwned\x07\x1b[2J\x0dfake\x9b31m"
HANDLER = f"def handle(event):\n    print({PAYLOAD!r} + '\\tend', flush=True)\n"


def deploy_shouting_function(mesh, tmp_path) -> None:
    (tmp_path / "shout").mkdir()
    (tmp_path / "shout" / "handler.py").write_text(HANDLER)
    mesh.cli("deploy", "-f", str(write_manifest(tmp_path, """
functions:
  shout:
    handler: shout/handler.py:handle
    on: [{{type: shout}}]
""")))
    mesh.cli("send", "--type", "shout", "--source", "/t")
    wait_for(lambda: "pwned" in logs(mesh, "--raw"), 15, message="the function's output")


def line_with(process: subprocess.Popen, needle: str, timeout: float = 15) -> str:
    """The first line `process` prints that contains `needle`."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.decode()) for line in process.stdout], daemon=True).start()
    return wait_for(lambda: next((line for line in iter_queue(lines) if needle in line), None), timeout,
                    message=f"a line with {needle!r} from {process.args}")


def iter_queue(lines: queue.Queue[str]):
    while not lines.empty():
        yield lines.get_nowait()


def follow(mesh, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*FMESH, "logs", "-f", "shout", *args], stdout=subprocess.PIPE, env=mesh.env(), cwd=ROOT)


def logs(mesh, *args: str) -> str:
    """`fmesh logs shout ARGS`'s output exactly (text mode would turn a "\r" into "\n")."""
    result = subprocess.run([*FMESH, "logs", "shout", *args], capture_output=True, env=mesh.env(), cwd=ROOT,
                            timeout=60, check=True)
    return result.stdout.decode()


def test_logs_show_control_characters_as_text(mesh, tmp_path):
    deploy_shouting_function(mesh, tmp_path)
    shown = logs(mesh)
    assert ESCAPED + "\tend\n" in shown  # tabs and newlines stay as they are
    assert not any(c in shown for c in "\x1b\x07\r\x9b"), repr(shown)
    follower = follow(mesh)
    try:
        line = line_with(follower, "pwned")
    finally:
        follower.kill()
        follower.wait()
    assert line.endswith(ESCAPED + "\tend\n"), repr(line)


def test_logs_raw_prints_the_output_as_written(mesh, tmp_path):
    deploy_shouting_function(mesh, tmp_path)
    assert PAYLOAD + "\tend\n" in logs(mesh, "--raw")
    follower = follow(mesh, "--raw")
    try:
        line = line_with(follower, "pwned")
    finally:
        follower.kill()
        follower.wait()
    assert line.endswith(PAYLOAD + "\tend\n"), repr(line)  # a "\r" does not end the line when following


def test_dead_letters_show_errors_and_events_as_text(mesh, tmp_path):
    (tmp_path / "doom").mkdir()
    (tmp_path / "doom" / "handler.py").write_text(
        "def handle(event):\n    raise RuntimeError('\\x1b[2J\\x1b]0;pwned\\x07 [/oops]')\n")
    mesh.cli("deploy", "-f", str(write_manifest(tmp_path, """
functions:
  doom:
    handler: doom/handler.py:handle
    on: [{{type: doom}}]
    delivery: {{retries: 0}}
""")))
    mesh.cli("send", "--type", "doom", "--source", "/t")
    wait_for(lambda: mesh.status("doom").get("dead_lettered") == 1, 15, message="the dead letter")
    result = subprocess.run([*FMESH, "dead-letters"], capture_output=True, env=mesh.env(), cwd=ROOT, timeout=60)
    shown = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()  # a "[/oops]" is not rich markup to choke on
    assert r"\x1b[2J\x1b]0;pwned\x07 [/oops]" in shown, shown
    assert not any(c in shown for c in "\x1b\x07"), repr(shown)
