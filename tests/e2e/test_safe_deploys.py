"""Deploys never make things worse (issue 10, items 1-3), through a real mesh and the CLI:
a version that cannot start never replaces one that works, a dead-letter or reply
target that does not exist is refused with its line, and functions sharing a folder
restart only when they changed."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import httpx
from support import wait_for

GOOD = """import os

def handle(event):
    with open(os.environ["OUT"], "a") as f:
        f.write(f"{os.environ['FMESH_VERSION']} {event['id']}\\n")
"""
SYNTAX_ERROR = "import os\n\ndef handle(event)\n    return None\n"  # line 3: the colon is missing
COMMAND_OK = """import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with open(os.environ["OUT"], "a") as f:
            f.write(f"{os.environ['FMESH_VERSION']} {self.headers['ce-id']}\\n")
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""
COMMAND_EXITS = "import sys\nprint('cannot open config.toml: no such file', flush=True)\nsys.exit(3)\n"


def manifest(folder: Path, out: Path, handler: str = "app/handler.py:handle", extra: str = "") -> Path:
    path = folder / "fmesh.yaml"
    path.write_text(f"""functions:
  app:
    handler: {handler}
    on: [{{type: work}}]
    env: {{OUT: "{out}"}}
{extra}""")
    return path


def command_manifest(folder: Path, out: Path, script: str) -> Path:
    path = folder / "fmesh.yaml"
    path.write_text(f"""functions:
  app:
    command: ["{sys.executable}", {script}]
    workdir: app
    on: [{{type: work}}]
    env: {{OUT: "{out}"}}
""")
    return path


class Sender:
    """Sends `work` events over HTTP on a thread, for as long as the test deploys."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ids: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                event_id = f"e{len(self.ids)}"
                headers = {"ce-specversion": "1.0", "ce-id": event_id, "ce-source": "/t", "ce-type": "work"}
                assert client.post(self.url + "/", headers=headers).status_code == 202
                self.ids.append(event_id)
                self._stop.wait(0.02)

    def __enter__(self) -> Sender:
        self._thread.start()
        wait_for(lambda: len(self.ids) >= 5, 10, message="the first events sent")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def handled(out: Path) -> dict[str, set[str]]:
    """event id → the versions that handled it."""
    seen: dict[str, set[str]] = {}
    for line in out.read_text().splitlines() if out.exists() else []:
        version, event_id = line.split()
        seen.setdefault(event_id, set()).add(version)
    return seen


def deployed_version(mesh) -> str:
    return mesh.api("GET", "/v1/functions/app").json()["version"]


def assert_all_handled_by(out: Path, ids: list[str], version: str) -> None:
    wait_for(lambda: set(ids) <= set(handled(out)), 30, message=f"all {len(ids)} events handled")
    versions = {v for vs in handled(out).values() for v in vs}
    assert versions == {version}, f"handled by {versions}, expected only the working {version}"


def test_a_python_handler_that_cannot_load_never_replaces_the_working_one(mesh, tmp_path):
    (tmp_path / "app").mkdir()
    handler = tmp_path / "app" / "handler.py"
    handler.write_text(GOOD)
    out = tmp_path / "out.txt"
    mesh.cli("deploy", "-f", str(manifest(tmp_path, out)))
    working = deployed_version(mesh)
    with Sender(mesh.url) as sender:
        handler.write_text(SYNTAX_ERROR)
        broken = mesh.cli("deploy", "-f", str(manifest(tmp_path, out)), check=False)
        assert broken.returncode != 0
        assert "handler.py:3" in broken.stderr and "SyntaxError" in broken.stderr, broken.stderr
        assert "Traceback" not in broken.stderr + broken.stdout

        handler.write_text(GOOD)
        misspelt = mesh.cli("deploy", "-f", str(manifest(tmp_path, out, "app/handler.py:handel")), check=False)
        assert misspelt.returncode != 0 and "has no function 'handel'" in misspelt.stderr, misspelt.stderr
        assert deployed_version(mesh) == working
        wait_for(lambda: len(sender.ids) >= 40, 20, message="events sent during the failed deploys")
    assert_all_handled_by(out, sender.ids, working)
    assert mesh.status("app")["dead_lettered"] == 0


def test_a_command_function_that_exits_at_once_never_replaces_the_working_one(mesh, tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "server.py").write_text(COMMAND_OK)
    (tmp_path / "app" / "exits.py").write_text(COMMAND_EXITS)
    out = tmp_path / "out.txt"
    mesh.cli("deploy", "-f", str(command_manifest(tmp_path, out, "server.py")))
    working = deployed_version(mesh)
    with Sender(mesh.url) as sender:
        broken = mesh.cli("deploy", "-f", str(command_manifest(tmp_path, out, "exits.py")), check=False)
        assert broken.returncode != 0
        assert "exited with code 3" in broken.stderr and "cannot open config.toml" in broken.stderr, broken.stderr
        wait_for(lambda: len(sender.ids) >= 20, 20, message="events sent after the failed deploy")
    assert deployed_version(mesh) == working
    assert_all_handled_by(out, sender.ids, working)


def test_a_first_deploy_that_fails_leaves_nothing_behind_unless_told_not_to_verify(mesh, tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "handler.py").write_text("import no_such_module_anywhere\n")
    path = manifest(tmp_path, tmp_path / "out.txt")
    failed = mesh.cli("deploy", "-f", str(path), check=False)
    assert failed.returncode != 0
    assert "handler.py:1" in failed.stderr and "ModuleNotFoundError" in failed.stderr, failed.stderr
    assert mesh.api("GET", "/v1/functions").json()["functions"] == []
    assert mesh.cli("logs", "app", check=False).returncode != 0  # no function, so no logs either

    skipped = mesh.cli("deploy", "-f", str(path), "--no-verify")
    assert "function app created" in skipped.stdout


def test_a_missing_dead_letter_or_reply_target_is_refused_with_its_line(mesh, tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "handler.py").write_text(GOOD)
    out = tmp_path / "out.txt"
    for field, extra, line in (
            ("functions.app.delivery.dead_letter", "    delivery: {dead_letter: nosuch}\n", 6),
            ("functions.app.reply_to", "    reply_to: nosuch\n", 6)):
        refused = mesh.cli("deploy", "-f", str(manifest(tmp_path, out, extra=extra)), check=False)
        assert refused.returncode == 2, refused.stderr
        assert f"fmesh.yaml:{line}: {field}: no function or bridge named 'nosuch'" in refused.stderr, refused.stderr
    assert mesh.api("GET", "/v1/functions").json()["functions"] == []
    # The API refuses the same without the CLI's help.
    spec = {"handler": "handler.py:handle", "delivery": {"dead_letter": "nosuch"}}
    answer = mesh.api("POST", "/v1/apply", json={"functions": {"app": {"spec": spec, "bundle": "0" * 64}}})
    assert answer.status_code == 422


def test_replies_can_go_to_another_function_by_name(mesh, tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "handler.py").write_text("def handle(event):\n    return {'from': event['id']}\n")
    (tmp_path / "sink").mkdir()
    (tmp_path / "sink" / "handler.py").write_text(GOOD)
    out = tmp_path / "out.txt"
    path = tmp_path / "fmesh.yaml"
    path.write_text(f"""functions:
  app:
    handler: app/handler.py:handle
    on: [{{type: work}}]
    reply_to: sink
  sink:
    handler: sink/handler.py:handle
    env: {{OUT: "{out}"}}
""")
    mesh.cli("deploy", "-f", str(path))
    mesh.cli("send", "--type", "work", "--source", "/t")
    wait_for(lambda: handled(out), 20, message="the reply at the sink function")


def test_functions_sharing_a_folder_restart_only_when_they_changed(mesh, tmp_path):
    project = tmp_path / "project"  # not tmp_path itself: the mesh's data dir is in there
    project.mkdir()
    (project / "one.py").write_text("def handle(event):\n    return None\n")
    (project / "two.py").write_text("def handle(event):\n    return None\n")
    path = project / "fmesh.yaml"  # in the same folder as both handlers

    def deploy(size: str) -> str:
        path.write_text(f"""functions:
  one: {{handler: one.py:handle, on: [{{type: a}}]}}
  two: {{handler: two.py:handle, on: [{{type: b}}], env: {{SIZE: "{size}"}}}}
""")
        return mesh.cli("deploy", "-f", str(path)).stdout

    deploy("1")
    changed = deploy("2")
    assert "function one unchanged" in changed and "function two updated" in changed, changed


def test_up_with_a_manifest_whose_function_cannot_start_exits_with_one_line(mesh_factory, tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "handler.py").write_text(GOOD)
    path = manifest(tmp_path, tmp_path / "out.txt", "app/handler.py:handel")
    mesh = mesh_factory().start("-f", str(path), wait=False)
    assert mesh.process.wait(30) == 1
    errors = [line for line in mesh.log().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "has no function 'handel'" in errors[0], mesh.log()
    assert "Traceback" not in mesh.log() and "ERROR" not in mesh.log(), mesh.log()


def test_a_deploy_whose_trigger_or_subscription_cannot_be_built_changes_nothing(mesh, tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "handler.py").write_text(GOOD)
    out = tmp_path / "out.txt"
    mesh.cli("deploy", "-f", str(manifest(tmp_path, out)))
    working = deployed_version(mesh)
    changed = "    scale: {max: 1}\n"  # the function changes too: it must stay as it was
    for extra, says in (
            (changed + "triggers:\n  hook:\n    http: {path: /hooks/x, auth: {hmac_secret_env: NOT_SET_ANYWHERE}}\n",
             "NOT_SET_ANYWHERE is not set"),
            (changed + "subscriptions:\n  audit:\n    filter: {type: work}\n    to: http://127.0.0.1:9/\n"
                       "    options: {bearer_env: NOPE_NOT_SET}\n", "NOPE_NOT_SET is not set")):
        refused = mesh.cli("deploy", "-f", str(manifest(tmp_path, out, extra=extra)), check=False)
        assert refused.returncode == 1 and says in refused.stderr and "500" not in refused.stderr, refused.stderr
        assert deployed_version(mesh) == working
    assert mesh.api("GET", "/v1/triggers").json()["triggers"] == []
    assert mesh.api("GET", "/v1/subscriptions").json()["subscriptions"] == []
    assert mesh.api("GET", "/v1/status").json()["sinks"] == []  # nothing routed to a half-made sink


def test_a_function_others_hand_events_to_cannot_be_deleted_from_under_them(mesh, tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "handler.py").write_text(GOOD)
    path = tmp_path / "fmesh.yaml"
    path.write_text("""functions:
  app:
    handler: app/handler.py:handle
    on: [{type: work}]
    reply_to: sink
  sink:
    handler: app/handler.py:handle
""")
    mesh.cli("deploy", "-f", str(path))
    refused = mesh.cli("delete", "sink", check=False)
    assert refused.returncode != 0 and "reply_to of function app" in refused.stderr, refused.stderr
    assert {f["name"] for f in mesh.api("GET", "/v1/functions").json()["functions"]} == {"app", "sink"}
    mesh.cli("delete", "app")
    mesh.cli("delete", "sink")  # nothing refers to it any more
