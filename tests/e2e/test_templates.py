"""Function templates through a real mesh: the handler is imported once per version with
the function's env and secrets, replicas are forked from it after scale-to-zero, a new
version or a rotated secret gets a new template, an idle template goes, and nothing is
left running when the mesh is SIGKILLed."""

from __future__ import annotations

import json
import signal
import uuid
from pathlib import Path

import httpx
from pools import alive, process_tree, zygotes
from support import wait_for, write_manifest

HANDLER = """import json, os, pathlib
IMPORTED_ENV = dict(os.environ)
IMPORTED_BY = os.getpid()
MARK = {mark!r}


def handle(event):
    children = [int(pid) for task in pathlib.Path("/proc/self/task").iterdir()
                for pid in (task / "children").read_text().split()]
    with open(os.environ["OUT"], "a") as out:
        out.write(json.dumps({{"mark": MARK, "pid": os.getpid(), "ppid": os.getppid(), "children": children,
                              "imported_by": IMPORTED_BY, "imported_env": IMPORTED_ENV, "env": dict(os.environ),
                              "cwd": os.getcwd()}}) + "\\n")
"""


def intro(tmp_path: Path, settings: str) -> Path:
    """The manifest of `intro` (HANDLER, v1) with these lines of settings, scaling to zero fast."""
    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "handler.py").write_text(HANDLER.format(mark="v1"))
    return write_manifest(tmp_path, f"""
functions:
  intro:
    handler: fn/handler.py:handle
    on: [{{{{type: t}}}}]{settings}
    scale: {{{{max: 1, idle_timeout: 500ms}}}}
""")


def test_templates_follow_versions_and_secrets_and_leave_nothing_behind(mesh_factory, tmp_path):
    api_key, password = "key-7a1c", tmp_path / "db-password"
    password.write_text("first-password\n")
    mesh = mesh_factory(extra=["--template-idle", "3s"], environ={"API_KEY": api_key})
    out = tmp_path / "seen.jsonl"
    manifest = intro(tmp_path, f"""
    env: {{{{OUT: "{out}", GREETING: hi}}}}
    secrets:
      API_KEY: {{{{env: API_KEY}}}}
      DB_PASSWORD: {{{{file: "{password}"}}}}""")
    mesh.start("-f", str(manifest))

    def cold_start() -> dict:
        """What a replica reports from an event sent with the function at zero replicas."""
        wait_for(lambda: mesh.status("intro").get("replicas") == 0, 20, message="intro to scale to zero")
        before = out.read_text().count("\n") if out.exists() else 0
        headers = {"ce-specversion": "1.0", "ce-type": "t", "ce-source": "/s", "ce-id": str(uuid.uuid4())}
        assert httpx.post(mesh.url, headers=headers).status_code == 202
        wait_for(lambda: out.exists() and out.read_text().count("\n") > before, 20, message="intro to run")
        return json.loads(out.read_text().splitlines()[-1])

    first = cold_start()
    assert first["imported_by"] == first["pid"]  # the first replica imports the handler, forks the template
    (template,) = first["children"]
    again = cold_start()
    assert again["imported_by"] == first["pid"] != again["pid"] and again["ppid"] == template
    for report in (first, again):
        assert report["imported_env"] == report["env"]  # the import saw the function's env and secrets
        assert {k: report["env"][k] for k in ("API_KEY", "DB_PASSWORD", "GREETING", "FMESH_FUNCTION")} == {
            "API_KEY": api_key, "DB_PASSWORD": "first-password", "GREETING": "hi", "FMESH_FUNCTION": "intro"}
        assert Path(report["cwd"], "handler.py").read_text() == HANDLER.format(mark="v1")

    password.write_text("rotated-password\n")  # a new secret: a new template, imported with it
    rotated = cold_start()
    assert rotated["imported_by"] == rotated["pid"] and rotated["imported_env"]["DB_PASSWORD"] == "rotated-password"
    wait_for(lambda: not alive(template), 20, message="the template of the old secret to go")

    (tmp_path / "fn" / "handler.py").write_text(HANDLER.format(mark="v2"))
    mesh.cli("deploy", "-f", str(manifest))
    v2 = cold_start()
    assert v2["mark"] == "v2" and v2["imported_by"] == v2["pid"]
    assert v2["imported_env"]["FMESH_VERSION"] != first["imported_env"]["FMESH_VERSION"]
    wait_for(lambda: not alive(rotated["children"][0]), 20, message="the old version's template to go")
    wait_for(lambda: mesh.status("intro").get("replicas") == 0, 20, message="intro to scale to zero")
    assert alive(v2["children"][0])
    wait_for(lambda: not alive(v2["children"][0]), 20, message="the idle template to go")

    cold_start()  # a template and maybe its first replica running when the mesh dies
    running = process_tree(mesh.process.pid) - {mesh.process.pid}
    assert len(running) >= 2, running  # the zygote and the template at least
    mesh.process.send_signal(signal.SIGKILL)
    mesh.process.wait(10)
    wait_for(lambda: not any(alive(pid) for pid in running), 15, message=f"{running} to end with the mesh")


def test_an_idle_mesh_lets_its_zygote_go_and_the_next_event_starts_another(mesh_factory, tmp_path):
    mesh = mesh_factory(extra=["--template-idle", "1s", "--zygote-idle", "1s"])
    out = tmp_path / "seen.jsonl"
    manifest = intro(tmp_path, f"""
    env: {{{{OUT: "{out}"}}}}""")
    mesh.start("-f", str(manifest))
    wait_for(lambda: "the zygote stopped after 1s" in mesh.log(), 30, message="the idle zygote to be let go")
    wait_for(lambda: not zygotes(mesh.process.pid), 10, message="the idle zygote to exit")

    for n in (1, 2):  # the first event starts a zygote again; after scale-to-zero its template serves
        headers = {"ce-specversion": "1.0", "ce-type": "t", "ce-source": "/s", "ce-id": str(uuid.uuid4())}
        assert httpx.post(mesh.url, headers=headers).status_code == 202
        wait_for(lambda n=n: out.exists() and out.read_text().count("\n") == n, 20, message=f"event {n} to run")
        wait_for(lambda: mesh.status("intro").get("replicas") == 0, 20, message="intro to scale to zero")
    first, second = (json.loads(line) for line in out.read_text().splitlines())
    assert second["imported_by"] == first["pid"] != second["pid"]
    assert len(zygotes(mesh.process.pid)) == 1  # a new one: it stays while its template lives
