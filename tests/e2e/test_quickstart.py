"""The README's walkthrough, as a new user runs it: up, deploy, send, logs, status."""

from __future__ import annotations

import json
import re

from support import ROOT, wait_for, write_manifest


def hello_manifest(tmp_path):
    """The hello function, on events of type greet."""
    return write_manifest(tmp_path, """
functions:
  hello:
    handler: {functions}/hello/handler.py:handle
    on: [{{type: greet}}]
""")


def test_quickstart_walkthrough(mesh_factory, tmp_path):
    mesh = mesh_factory().start("-f", str(ROOT / "examples/quickstart/fmesh.yaml"))
    assert "3 created" in mesh.log()

    sent = mesh.cli("send", "--type", "com.example.hello", "--source", "/test", "--data", '{"name": "Ann"}')
    event_id, status = sent.stdout.split()[:2]
    assert status == "202"

    wait_for(lambda: event_id in mesh.cli("logs", "hello").stdout, 5, message="hello's output in its logs")
    logs = mesh.cli("logs", "hello").stdout
    assert re.search(r"hello@[0-9a-f]{6}/1 stdout: hello got com.example.hello", logs), logs
    # hello's reply is routed on to `greeted`, which logs it
    wait_for(lambda: "Hello, Ann!" in mesh.cli("logs", "greeted").stdout, 5, message="the reply reaching greeted")

    report = json.loads(mesh.cli("status", "--json").stdout)
    hello = next(f for f in report["functions"] if f["name"] == "hello")
    assert isinstance(hello["replicas"], int) and hello["replicas"] == 1
    assert hello["delivered"] == 1

    # flaky fails twice, then succeeds; it counts attempts in its own folder, not in a shared /tmp file
    mesh.cli("send", "--type", "com.example.flaky", "--source", "/test")
    wait_for(lambda: mesh.status("flaky").get("delivered") == 1, 15, message="flaky's third attempt")
    assert mesh.status("flaky")["failed"] == 2
    counts = list(mesh.data_dir.rglob(".attempts.json"))
    assert len(counts) == 1 and (counts[0].parent / "handler.py").exists(), counts


def test_function_scales_back_to_zero(mesh, tmp_path):
    manifest = write_manifest(tmp_path, """
functions:
  hello:
    handler: {functions}/hello/handler.py:handle
    on: [{{type: greet}}]
    scale: {{max: 2, idle_timeout: 1s}}
""")
    mesh.cli("deploy", "-f", str(manifest))
    assert mesh.status("hello")["replicas"] == 0  # nothing runs before the first event
    mesh.cli("send", "--type", "greet", "--source", "/t")
    wait_for(lambda: mesh.status("hello")["delivered"] == 1, 10, message="the event to be delivered")
    assert mesh.status("hello")["replicas"] == 1
    wait_for(lambda: mesh.status("hello")["replicas"] == 0, 10, message="scale to zero")
    # and it cold-starts again for the next event
    mesh.cli("send", "--type", "greet", "--source", "/t")
    wait_for(lambda: mesh.status("hello")["delivered"] == 2, 10, message="the second delivery")
    assert mesh.status("hello")["cold_start_last_ms"] is not None


def test_deploy_reports_created_updated_unchanged_deleted(mesh, tmp_path):
    text = """
functions:
  a:
    handler: {functions}/sink/handler.py:handle
    on: [{{type: a}}]
  b:
    handler: {functions}/sink/handler.py:handle
    on: [{{type: b}}]
"""
    manifest = write_manifest(tmp_path, text)
    out = mesh.cli("deploy", "-f", str(manifest)).stdout
    assert "function a created" in out and "function b created" in out
    assert "2 created" in out
    out = mesh.cli("deploy", "-f", str(manifest)).stdout
    assert "function a unchanged" in out and "2 unchanged" in out
    write_manifest(tmp_path, text.replace("type: a}", "type: a2}").split("  b:")[0])
    out = mesh.cli("deploy", "-f", str(manifest), "--prune").stdout
    assert "function a updated" in out and "function b deleted" in out
    names = [f["name"] for f in mesh.api("GET", "/v1/functions").json()["functions"]]
    assert names == ["a"]


def test_deployed_functions_survive_a_restart(mesh_factory, tmp_path):
    mesh = mesh_factory().start()
    manifest = hello_manifest(tmp_path)
    mesh.cli("deploy", "-f", str(manifest))
    mesh.stop()
    mesh.start()
    assert "restored 1 deployed resource" in mesh.log()
    mesh.cli("send", "--type", "greet", "--source", "/t")
    wait_for(lambda: mesh.status("hello").get("delivered") == 1, 10, message="delivery after restart")


def test_delete_removes_the_function(mesh, tmp_path):
    manifest = hello_manifest(tmp_path)
    mesh.cli("deploy", "-f", str(manifest))
    assert "deleted" in mesh.cli("delete", "hello").stdout
    assert mesh.api("GET", "/v1/functions").json()["functions"] == []
    missing = mesh.cli("delete", "hello", check=False)
    assert missing.returncode != 0 and "no function named 'hello'" in missing.stderr


def test_prometheus_metrics(mesh, tmp_path):
    import httpx

    manifest = hello_manifest(tmp_path)
    mesh.cli("deploy", "-f", str(manifest))
    mesh.cli("send", "--type", "greet", "--source", "/t")
    wait_for(lambda: mesh.status("hello")["delivered"] == 1, 10, message="the delivery")
    text = httpx.get(mesh.url + "/metrics").text
    assert 'fmesh_function_delivered_total{function="hello"} 1.0' in text
    assert 'fmesh_function_replicas{function="hello"} 1.0' in text
    assert "fmesh_function_cold_start_seconds" in text
