"""Issue 4 through a real mesh: any-language functions, per-function requirements, safe
redeploys under a stream of events, autoscaling, and secrets that stay secret."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time

import httpx
import pytest
from support import FIXTURES, ROOT, json_lines, wait_for, write_manifest


def records(path):
    return json_lines(path)


def payload(record):
    import base64

    return json.loads(base64.b64decode(record["payload"]))


def test_node_function_deployed_from_a_manifest(mesh, tmp_path):
    if not shutil.which("npm"):
        pytest.skip("needs Node.js and npm")
    folder = tmp_path / "node-hello"
    shutil.copytree(ROOT / "functions/node-hello", folder)
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=folder, check=True,
                   capture_output=True, timeout=300)
    out = tmp_path / "replies.jsonl"
    manifest = write_manifest(tmp_path, f"""
functions:
  node-hello:
    command: [node, server.js]
    workdir: node-hello
    on: [{{{{type: greet}}}}]
  replies:
    handler: {{fixtures}}/record/handler.py:handle
    on: [{{{{type: greet.reply}}}}]
    env: {{{{RECORD_TO: "{out}"}}}}
""")
    mesh.cli("deploy", "-f", str(manifest))
    mesh.cli("send", "--type", "greet", "--source", "/t", "--data", '{"name": "Ann"}')
    wait_for(lambda: records(out), 30, message="the Node.js function's reply")
    assert payload(records(out)[0])["greeting"] == "Hello, Ann!"
    assert "node-hello got greet" in mesh.cli("logs", "node-hello").stdout


def test_requirements_are_installed_at_deploy_time(mesh, tmp_path):
    out = tmp_path / "replies.jsonl"
    manifest = write_manifest(tmp_path, f"""
functions:
  withdeps:
    handler: {{fixtures}}/withdeps/handler.py:handle
    on: [{{{{type: pretty}}}}]
  replies:
    handler: {{fixtures}}/record/handler.py:handle
    on: [{{{{type: pretty.reply}}}}]
    env: {{{{RECORD_TO: "{out}"}}}}
""")
    first = mesh.cli("deploy", "-f", str(manifest), timeout=300)
    assert "requirements of withdeps installed" in first.stdout
    again = mesh.cli("deploy", "-f", str(manifest), timeout=300)
    assert "function withdeps unchanged" in again.stdout
    mesh.cli("send", "--type", "pretty", "--source", "/t")
    wait_for(lambda: records(out), 20, message="the reply")
    reply = payload(records(out)[0])
    assert reply["pretty"] == "1,234,567" and str(mesh.data_dir / "deps") in reply["from"]


def test_a_failing_install_fails_the_deploy_and_the_old_version_keeps_serving(mesh, tmp_path):
    good = write_manifest(tmp_path, """
functions:
  svc:
    handler: {fixtures}/versioned/handler.py:handle
    on: [{{type: v}}]
""")
    mesh.cli("deploy", "-f", str(good))
    before = mesh.api("GET", "/v1/functions/svc").json()["version"]
    bad_folder = tmp_path / "bad"
    shutil.copytree(FIXTURES / "functions/baddeps", bad_folder)
    bad = write_manifest(tmp_path, """
functions:
  svc:
    handler: bad/handler.py:handle
    on: [{{type: v}}]
""")
    result = mesh.cli("deploy", "-f", str(bad), check=False, timeout=300)
    assert result.returncode != 0
    assert "installing requirements.txt failed" in result.stderr
    assert "fmesh-this-package-does-not-exist" in result.stderr  # pip's own words
    assert mesh.api("GET", "/v1/functions/svc").json()["version"] == before
    mesh.cli("send", "--type", "v", "--source", "/t")
    wait_for(lambda: mesh.status("svc")["delivered"] == 1, 10, message="the old version to serve")


def test_redeploying_twice_during_a_stream_loses_nothing_and_never_mixes_versions(mesh, tmp_path):
    out = tmp_path / "replies.jsonl"
    code = tmp_path / "versioned"

    def manifest(tag: str):
        shutil.rmtree(code, ignore_errors=True)
        shutil.copytree(FIXTURES / "functions/versioned", code)
        handler = code / "handler.py"
        handler.write_text(handler.read_text().replace('CODE = "v0"', f'CODE = "{tag}"'))
        return write_manifest(tmp_path, f"""
functions:
  versioned:
    handler: versioned/handler.py:handle
    on: [{{{{type: stream}}}}]
    env: {{{{TAG: {tag}}}}}
    scale: {{{{max: 2, concurrency: 4}}}}
  replies:
    handler: {{fixtures}}/record/handler.py:handle
    on: [{{{{type: stream.reply}}}}]
    env: {{{{RECORD_TO: "{out}"}}}}
    scale: {{{{max: 1, concurrency: 8}}}}
""")

    mesh.cli("deploy", "-f", str(manifest("v1")))
    sent: list[str] = []
    sender = threading.Thread(target=send_stream, args=(mesh.url, 2000, sent))
    sender.start()
    for tag in ("v2", "v3"):
        wait_for(lambda n=len(sent): len(sent) >= n + 500, 60, message="more of the stream")
        mesh.cli("deploy", "-f", str(manifest(tag)))
    sender.join(120)
    assert len(sent) == 2000
    wait_for(lambda: len({payload(r)["in"] for r in records(out)}) == 2000, 120, interval=0.5,
             message="a reply to each of the 2,000 events")
    replies = [payload(r) for r in records(out)]
    assert all(r["code"] == r["env"] for r in replies), "a reply came from a half-updated function"
    versions = {r["code"]: r["version"] for r in replies}
    assert set(versions) == {"v1", "v2", "v3"}, "each version should have handled some events"
    assert len(set(versions.values())) == 3
    assert all(versions[r["code"]] == r["version"] for r in replies)


def send_stream(url: str, count: int, sent: list[str]) -> None:
    with httpx.Client(timeout=30) as client:
        for i in range(count):
            event_id = f"s{i}"
            headers = {"ce-id": event_id, "ce-source": "/t", "ce-type": "stream", "ce-specversion": "1.0"}
            assert client.post(url, headers=headers).status_code == 202
            sent.append(event_id)
            time.sleep(0.002)


def test_autoscaling_follows_load_up_and_back_to_zero(mesh, tmp_path):
    manifest = write_manifest(tmp_path, """
functions:
  slow:
    handler: {fixtures}/slow/handler.py:handle
    on: [{{type: nap}}]
    scale: {{max: 4, concurrency: 1, idle_timeout: 1s}}
""")
    mesh.cli("deploy", "-f", str(manifest))
    events = [{"specversion": "1.0", "id": f"n{i}", "source": "/t", "type": "nap", "data": {"sleep": 1}}
              for i in range(12)]
    assert httpx.post(mesh.url, json=events,
                      headers={"content-type": "application/cloudevents-batch+json"}).status_code == 202
    peak = wait_for(lambda: mesh.status("slow")["replicas"] >= 4 and mesh.status("slow"), 15,
                    message="four replicas under load")
    assert peak["desired"] == 4 and peak["replicas"] == 4
    wait_for(lambda: mesh.status("slow")["delivered"] == 12, 30, message="all twelve events")
    wait_for(lambda: mesh.status("slow")["replicas"] == 0, 15, message="scale to zero after the load")


def test_secrets_reach_the_function_but_never_the_api_or_logs(mesh_factory, tmp_path):
    secret = "s3cr3t-value-9f8e7d"
    secret_file = tmp_path / "db-password"
    secret_file.write_text("file-secret-42\n")
    mesh = mesh_factory()
    mesh.env = (lambda base: lambda **more: {**base(**more), "API_KEY": secret})(mesh.env)
    mesh.start()
    out = tmp_path / "seen.jsonl"
    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "handler.py").write_text(
        "import os, json\n"
        "def handle(event):\n"
        f"    open({str(out)!r}, 'a').write(json.dumps([os.environ['API_KEY'], os.environ['DB_PASSWORD']]) + '\\n')\n")
    manifest = write_manifest(tmp_path, f"""
functions:
  uses-secrets:
    handler: fn/handler.py:handle
    on: [{{{{type: s}}}}]
    secrets:
      API_KEY: {{{{env: API_KEY}}}}
      DB_PASSWORD: {{{{file: "{secret_file}"}}}}
""")
    mesh.cli("deploy", "-f", str(manifest))
    mesh.cli("send", "--type", "s", "--source", "/t")
    wait_for(lambda: out.exists(), 10, message="the function to run")
    assert json.loads(out.read_text()) == [secret, "file-secret-42"]
    shown = (mesh.api("GET", "/v1/functions").text + mesh.api("GET", "/v1/status").text
             + mesh.cli("status", "--json").stdout + mesh.cli("logs", "uses-secrets").stdout + mesh.log())
    assert secret not in shown and "file-secret-42" not in shown
    assert "API_KEY" in mesh.api("GET", "/v1/functions").text  # the name is fine to show
