"""`fmesh up --log-format json|text`: what the mesh itself says, with the event and function
on the line about a dead-lettered event."""

from __future__ import annotations

import json
import os

import pytest
from support import run_cli, wait_for, write_manifest

EVENT_ID = 'order "7"\u202e'  # whatever a producer sent: quotes and a bidi override (control characters are refused)


def test_the_dead_letter_line_names_the_event_and_function_in_json_and_in_text(mesh_factory, tmp_path):
    meshes = dead_letter_one_event(mesh_factory, tmp_path)
    every_line_is_a_json_object_with_the_dead_letter_fields(meshes["json"].log())
    text_shows_the_dead_letter_line_with_the_event_id_escaped(meshes["text"].log())


def dead_letter_one_event(mesh_factory, tmp_path):
    """A json mesh and a text mesh (started side by side), each with a function that always
    fails, each sent one event; given once both have dead-lettered it and stopped."""
    manifest = write_manifest(tmp_path, """
functions:
  fail:
    handler: {fixtures}/fail/handler.py:handle
    on: [{{type: com.test.fail}}]
    delivery: {{retries: 0}}
""")
    started = {f: mesh_factory(extra=["--log-format", f]).start("-f", str(manifest), wait=False)
               for f in ("json", "text")}
    event = {"specversion": "1.0", "id": EVENT_ID, "source": "/shop", "type": "com.test.fail"}
    for mesh in started.values():
        wait_for(mesh.healthy, 60, message=f"mesh on {mesh.url} to start:\n{mesh.log()}")
        sent = mesh.api("POST", "/", content=json.dumps(event),
                        headers={"content-type": "application/cloudevents+json"})
        assert sent.status_code == 202, sent.text
    for mesh in started.values():
        wait_for(lambda mesh=mesh: "dead-lettered" in mesh.log(), 30, message=f"the dead-letter line in:\n{mesh.log()}")
        mesh.stop()
    return started


def every_line_is_a_json_object_with_the_dead_letter_fields(log: str) -> None:
    records = []
    for line in log.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}\n{log}")
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records), records
    [dead] = [r for r in records if r["message"] == "event dead-lettered"]
    assert dead["level"] == "warning" and dead["event_id"] == EVENT_ID and dead["function"] == "fail"
    assert dead["event_source"] == "/shop" and dead["event_type"] == "com.test.fail" and dead["attempts"] == 1
    assert "always fails" in dead["error"]
    assert any(r["message"].startswith("fmesh mesh up on") for r in records)
    assert any(r["message"].startswith("stopped on SIGINT") for r in records)



def text_shows_the_dead_letter_line_with_the_event_id_escaped(text: str) -> None:
    [line] = [line for line in text.splitlines() if "dead-lettered" in line]
    assert line.startswith('warning: event dead-lettered event_id="order \\"7\\"\\u202e" event_source=/shop '), line
    assert " function=fail " in line and " attempts=1 " in line and "\u202e" not in text
    assert "fmesh: stopped on SIGINT" in text


def test_an_unknown_log_format_or_level_is_refused_in_one_line(tmp_path):
    env = {**os.environ, "FMESH_DATA_DIR": str(tmp_path)}
    bad_format = run_cli(["up", "--log-format", "yaml"], env, check=False)
    assert bad_format.returncode == 2 and bad_format.stderr.splitlines() == [
        "error: --log-format must be text or json, not 'yaml'"], bad_format.stderr
    sidecar = ["sidecar", "--function", "f", "--target", "http://127.0.0.1:1/", "--store", "nats://127.0.0.1:1"]
    bad_level = run_cli(sidecar, {**env, "FMESH_LOG_LEVEL": "loud"}, check=False)
    assert bad_level.returncode == 2 and bad_level.stderr.splitlines() == [
        "error: --log-level must be debug, info, warning or error, not 'loud'"], bad_level.stderr
