"""`fmesh new`, `invoke`, `get` and `delete` as a new user runs them: from an empty folder to a
function deployed, tried, listed and removed, against a real `fmesh up`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from support import FMESH, free_port, write_manifest


def fmesh(mesh, cwd, *args, check=True):
    """`fmesh ARGS` run in `cwd` (the user's project folder), pointed at `mesh`."""
    result = subprocess.run([*FMESH, *args], capture_output=True, text=True, env=mesh.env(), cwd=cwd, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"fmesh {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def cli(mesh, *args, check=True):
    """`fmesh ARGS` in this process (typer's runner: the same code, a second less than a
    subprocess), pointed at the real `mesh`."""
    from typer.testing import CliRunner

    from fmesh.cli import app

    result = CliRunner().invoke(app, list(args), env={"FMESH_URL": mesh.url, "FMESH_TOKEN": mesh.token})
    result.returncode = result.exit_code
    if check and result.exit_code != 0:
        raise AssertionError(f"fmesh {' '.join(args)} failed ({result.exit_code}):\n{result.stdout}\n{result.stderr}")
    return result


def refused(result, *words):
    """A refusal as users should see it: non-zero exit, one line naming what was wrong, no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def deployed(mesh, project, kind="functions"):
    return {f["name"]: f for f in json.loads(fmesh(mesh, project, "get", kind, "-o", "json").stdout)[kind]}


def user_pytest(project):
    """The tests `fmesh new` wrote, run as the user would, from the project folder (without
    the plugins of this venv, which they do not need: loading those is most of the time)."""
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "functions"],
                          capture_output=True, text=True, cwd=project, timeout=120,
                          env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})


def test_from_an_empty_folder_to_a_reply_and_back(mesh, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    fmesh(mesh, project, "new", "hello")
    fmesh(mesh, project, "new", "echo", "--lang", "command")
    tested = user_pytest(project)
    assert tested.returncode == 0 and "3 passed" in tested.stdout, tested.stdout + tested.stderr
    fmesh(mesh, project, "deploy")

    invoked = fmesh(mesh, project, "invoke", "hello", "--data", '{"x":1}')
    assert json.loads(invoked.stdout) == {"greeting": "Hello, world!"}
    whole = json.loads(fmesh(mesh, project, "invoke", "echo", "--data", '{"name": "Ada"}', "--event").stdout)
    assert whole["type"] == "dev.fmesh.invoke.reply" and whole["data"] == {"greeting": "Hello, Ada!"}
    listed = deployed(mesh, project)
    assert sorted(listed) == ["echo", "hello"]
    assert listed["hello"]["spec"]["handler"] == "functions/hello/handler.py:handle"
    assert listed["hello"]["version"] == mesh.status("hello")["version"]

    assert "function hello deleted" in fmesh(mesh, project, "delete", "function", "hello").stdout
    assert list(deployed(mesh, project)) == ["echo"]
    refused(fmesh(mesh, project, "invoke", "hello", "--data", "{}", check=False), "no function named 'hello'")
    refused(fmesh(mesh, project, "invoke", "echo", "--data", "not json", check=False), "--data is not JSON")

    event = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/t", "ce-type": "t"}
    assert mesh.api("POST", "/v1/functions/echo/invoke", content=b"{}").status_code == 415
    bad = mesh.api("POST", "/v1/functions/echo/invoke", headers={**event, "ce-specversion": "0.1"})
    assert bad.status_code == 400 and "specversion" in bad.json()["error"]
    assert mesh.api("POST", "/v1/functions/echo/invoke", headers={**event, "authorization": ""}).status_code == 401


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_function_from_an_empty_folder(mesh, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    fmesh(mesh, project, "new", "hello", "--lang", "node")
    tested = user_pytest(project)
    assert tested.returncode == 0 and "1 passed" in tested.stdout, tested.stdout + tested.stderr
    fmesh(mesh, project, "deploy")

    invoked = fmesh(mesh, project, "invoke", "hello", "--data", '{"x":1}')
    assert json.loads(invoked.stdout) == {"greeting": "Hello, world!"}
    assert deployed(mesh, project)["hello"]["spec"]["command"] == ["node", "server.js"]
    fmesh(mesh, project, "delete", "function", "hello")
    assert deployed(mesh, project) == {}


EVERY_KIND = """
functions:
  hello:
    handler: {functions}/hello/handler.py:handle
    on: [{{type: greet}}]
  outside: {{external: true, on: [{{type: com.example.outside}}]}}
  fail: {{handler: {fixtures}/fail/handler.py:handle}}
  slow: {{handler: {fixtures}/slow/handler.py:handle, timeout: 1s}}
triggers:
  tick: {{timer: {{every: 1h, type: greet}}}}
subscriptions:
  audit: {{filter: {{type: greet}}, to: "http://127.0.0.1:PORT/audit"}}
bridges:
  eu: {{to: "http://127.0.0.1:PORT", filter: {{type: com.example.eu}}}}
peers:
  partner: {{auth: {{token_env: PARTNER_TOKEN}}}}
"""


def test_get_and_delete_every_kind(mesh_factory, tmp_path):
    mesh = mesh_factory(environ={"PARTNER_TOKEN": "partner-secret"}).start()
    manifest = write_manifest(tmp_path, EVERY_KIND.replace("PORT", str(free_port())))
    cli(mesh, "deploy", "-f", str(manifest))

    for kind, name, field in [("function", "hello", "handler"), ("trigger", "tick", "timer"),
                              ("subscription", "audit", "to"), ("bridge", "eu", "to"), ("peer", "partner", "auth")]:
        table = cli(mesh, "get", f"{kind}s").stdout.splitlines()
        assert table[0].split()[:2] == ["NAME", "VERSION"], table
        versions = {line.split()[0]: line.split()[1] for line in table[1:]}
        one = yaml.safe_load(cli(mesh, "get", kind, name).stdout)
        assert one["name"] == name and one["version"] == versions[name] and field in one["spec"], one
        assert one["status"]["state"] != "broken", one
    assert yaml.safe_load(cli(mesh, "get", "function", "outside").stdout)["status"]["state"] == "external"
    refused(cli(mesh, "invoke", "outside", check=False), "function outside is external")
    refused(cli(mesh, "invoke", "fail", check=False), "function fail failed", "this function always fails")
    refused(cli(mesh, "invoke", "slow", "--data", '{"sleep": 5}', check=False), "did not finish within 1s")
    listed = json.loads(cli(mesh, "get", "subscriptions", "-o", "json").stdout)["subscriptions"]
    assert [s["name"] for s in listed] == ["audit"] and listed[0]["spec"]["to"].endswith("/audit")

    for kind, name in [("subscription", "audit"), ("trigger", "tick")]:
        assert f"{kind} {name} deleted" in cli(mesh, "delete", kind, name).stdout
        assert mesh.api("GET", f"/v1/{kind}s/{name}").status_code == 404
    refused(cli(mesh, "delete", "trigger", "tick", check=False), "no trigger named 'tick'")

    removed = cli(mesh, "delete", "-f", str(manifest)).stdout
    assert "trigger tick not deployed" in removed and "function hello deleted" in removed
    assert "bridge eu deleted" in removed and "peer partner deleted" in removed and "6 deleted" in removed
    assert all(mesh.api("GET", f"/v1/{kind}s").json()[f"{kind}s"] == [] for kind in ("function", "bridge", "peer"))
    assert cli(mesh, "get", "bridges").stdout.strip() == "No bridges deployed."

    refused(cli(mesh, "get", "widgets", check=False), "unknown kind 'widgets'")
    refused(cli(mesh, "get", "function", "hello", check=False), "no function named 'hello'")
    refused(cli(mesh, "get", "functions", "-o", "xml", check=False), "-o must be yaml or json")
    refused(cli(mesh, "delete", "widget", "x", check=False), "unknown kind 'widget'")
    refused(cli(mesh, "delete", "bridge", check=False), "name the bridge to delete")
    refused(cli(mesh, "delete", "hello", check=False), "no function named 'hello'")
    refused(cli(mesh, "delete", "-f", "missing.yaml", check=False), "missing.yaml")


def test_version_comes_from_the_package(tmp_path):
    from importlib.metadata import version

    shown = subprocess.run([*FMESH, "--version"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout.strip() == f"fmesh {version('fmesh')}"
