"""Nothing the mesh writes is readable by another local user; what functions write is theirs."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from support import FMESH, wait_for, write_manifest

HANDLER = """import os
def handle(event):
    print("handled", event["id"], flush=True)
    open(os.path.join(os.environ["OWN"], "python-" + event["id"]), "w").write("mine")
    raise RuntimeError("to the dead letters")
"""
SERVER = """import os
from http.server import BaseHTTPRequestHandler, HTTPServer
open(os.path.join(os.environ["OWN"], "command"), "w").write("mine")
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def modes(root: Path) -> dict[str, int]:
    """Permission bits of `root` and of everything under it, by path relative to `root`."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        if not path.is_symlink():
            found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


@pytest.mark.parametrize("launcher", ["zygote", "subprocess"])
def test_the_data_dir_and_everything_in_it_is_for_its_user_only(mesh_factory, tmp_path, launcher):
    own = tmp_path / "own"
    own.mkdir()
    for folder, name, text in (("py", "handler.py", HANDLER), ("cmd", "server.py", SERVER)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_text(text)
    manifest = write_manifest(tmp_path, f"""
functions:
  doomed:
    handler: py/handler.py:handle
    on: [{{{{type: doom}}}}]
    env: {{{{OWN: "{own}"}}}}
    delivery: {{{{retries: 0}}}}
  served:
    command: ["{sys.executable}", server.py]
    workdir: cmd
    on: [{{{{type: never}}}}]
    env: {{{{OWN: "{own}"}}}}
    scale: {{{{min: 1}}}}
""")
    mesh = mesh_factory(extra=["--launcher", launcher])
    mesh.data_dir.mkdir()
    mesh.data_dir.chmod(0o755)  # as an older fmesh left it
    previous = os.umask(0o002)  # the user's umask, which the mesh must give back to functions
    try:
        mesh.start("-f", str(manifest))
    finally:
        os.umask(previous)
    event_id = mesh.cli("send", "--type", "doom", "--source", "/t").stdout.split()[0]
    wait_for(lambda: mesh.status("doomed").get("dead_lettered") == 1, 20, message="the dead letter")
    wait_for(lambda: (own / "command").exists(), 20, message="the command function to start")

    assert f"data dir {mesh.data_dir} could be read by other users (0755): made it 0700" in mesh.log()
    found = modes(mesh.data_dir)
    for expected in ("mesh.db", "mesh.db-wal", "mesh.db-shm", "logs/doomed.log", "logs/served.log", "mesh-id",
                     "lock"):
        assert expected in found, sorted(found)
    assert any(name.startswith("bundles/") and name.endswith("handler.py") for name in found), sorted(found)
    assert "handled" in (mesh.data_dir / "logs/doomed.log").read_text()
    readable_by_others = {name: oct(mode) for name, mode in found.items() if mode & 0o077}
    assert readable_by_others == {}
    assert found["."] == 0o700
    # The functions' own files are made with the umask the mesh was started with.
    assert oct(stat.S_IMODE((own / f"python-{event_id}").stat().st_mode)) == oct(0o664)
    assert oct(stat.S_IMODE((own / "command").stat().st_mode)) == oct(0o664)


def test_a_sidecars_data_dir_is_for_its_user_only(tmp_path):
    from external import NatsServer

    nats = NatsServer(tmp_path / "nats").start()
    folder = tmp_path / "sidecar"
    folder.mkdir()
    folder.chmod(0o755)
    output = tmp_path / "sidecar.out"
    with output.open("wb") as out:
        sidecar = subprocess.Popen([*FMESH, "sidecar", "--function", "orders", "--target", "http://127.0.0.1:9/",
                                    "--store", f"nats://127.0.0.1:{nats.port}", "--data-dir", str(folder)],
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "waiting: no function orders" in output.read_text(), 30,
                 message=f"the sidecar to start:\n{output.read_text()}")
        found = modes(folder)
    finally:
        sidecar.terminate()
        sidecar.wait(15)
        nats.stop()
    assert f"data dir {folder} could be read by other users (0755): made it 0700" in output.read_text()
    assert "node-id" in found and "logs" in found, sorted(found)
    assert {name: oct(mode) for name, mode in found.items() if mode & 0o077} == {}
