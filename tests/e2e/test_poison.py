"""One poisoned event must never stop a function (issue 10, item 7), through a real mesh:
what the ingress can see is refused with a 400, and what it cannot (a row already in
the store) is dead-lettered while the function goes on, across a restart too."""

from __future__ import annotations

import sqlite3

import httpx
from support import append_manifest, wait_for

STRUCTURED = {"content-type": "application/cloudevents+json"}
POISON = b'{"specversion":"1.0","id":"poison","source":"/attacker","type":"work","subject":"\\ud800"}'


def lines(path):
    return path.read_text().split() if path.exists() else []


def send(url: str, event_id: str) -> None:
    headers = {"ce-specversion": "1.0", "ce-id": event_id, "ce-source": "/t", "ce-type": "work"}
    assert httpx.post(url + "/", headers=headers).status_code == 202


def test_a_lone_surrogate_is_refused_at_the_ingress_and_the_function_goes_on(mesh, tmp_path):
    out = tmp_path / "out.txt"
    mesh.cli("deploy", "-f", str(append_manifest(tmp_path, out, "work")))
    structured = httpx.post(mesh.url + "/", headers=STRUCTURED, content=POISON)
    assert structured.status_code == 400 and structured.json()["attribute"] == "subject"
    binary = httpx.post(mesh.url + "/", headers={"ce-specversion": "1.0", "ce-id": "p2", "ce-source": "/a",
                                                 "ce-type": "work", "ce-subject": "%ED%A0%80"})
    assert binary.status_code == 400 and binary.json()["attribute"] == "subject"
    send(mesh.url, "after")
    wait_for(lambda: lines(out) == ["after"], 20, message="the normal event after the refused ones")


def poison_the_store(data_dir) -> None:
    """Write an event straight into the event log, as an older mesh or a bad disk page could."""
    db = sqlite3.connect(data_dir / "mesh.db", timeout=10, isolation_level=None)
    db.execute("INSERT INTO deliveries(subscription, attributes, due_at) VALUES ('function:append', ?, 0)",
               (POISON,))
    db.close()


def dead_letters(mesh) -> list[dict]:
    return mesh.api("GET", "/v1/dead-letters", params={"function": "append"}).json()["dead_letters"]


def test_an_undecodable_stored_event_is_dead_lettered_and_the_function_keeps_receiving(mesh_factory, tmp_path):
    out = tmp_path / "out.txt"
    mesh = mesh_factory().start()
    mesh.cli("deploy", "-f", str(append_manifest(tmp_path, out, "work")))
    poison_the_store(mesh.data_dir)
    send(mesh.url, "while-running")
    wait_for(lambda: "while-running" in lines(out), 20, message="the event after the poisoned row")
    wait_for(lambda: dead_letters(mesh), 20, message="the poisoned row dead-lettered")
    [letter] = dead_letters(mesh)
    assert letter["reason"] == "undecodable" and "surrogate" in letter["error"]

    mesh.stop()
    poison_the_store(mesh.data_dir)  # and again while the mesh is down: found at start
    mesh.start()
    send(mesh.url, "after-restart")
    wait_for(lambda: "after-restart" in lines(out), 20, message="the event after the restart")
    wait_for(lambda: len(dead_letters(mesh)) == 2, 20, message="the second poisoned row dead-lettered")
    assert "poison" not in lines(out)
    assert mesh.status("append")["dead_lettered"] == 2


HANDLERS = {
    "raises": "def handle(event):\n    raise ValueError(event.data['name'])\n",
    "echoes": ("from cloudevents.core.v1.event import CloudEvent\n\n"
               "def handle(event):\n"
               "    return CloudEvent({'type': 'echoed', 'source': '/e', 'subject': event.data['name']})\n"),
}


def test_a_lone_surrogate_inside_json_data_cannot_wedge_or_crash_replicas(mesh, tmp_path):
    """The ingress keeps binary-mode bodies as sent; `\\ud800` in JSON data reaches handlers."""
    out = tmp_path / "out.txt"
    text = "functions:\n"
    for name, code in HANDLERS.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "handler.py").write_text(code)
        for concurrency in (1, 4):
            text += (f"  {name}-{concurrency}:\n    handler: {name}/handler.py:handle\n    on: [{{type: poison}}]\n"
                     f"    scale: {{max: 1, concurrency: {concurrency}}}\n    timeout: 10s\n"
                     f"    delivery: {{retries: 0}}\n")
    text += f"""  after:
    handler: {tmp_path / "after.py"}:handle
    on: [{{type: echoed}}]
    env: {{APPEND_TO: "{out}"}}
"""
    (tmp_path / "after.py").write_text(
        "import os\n\ndef handle(event):\n    open(os.environ['APPEND_TO'], 'a').write(event['subject'] + '\\n')\n")
    manifest = tmp_path / "poison.yaml"
    manifest.write_text(text)
    mesh.cli("deploy", "-f", str(manifest))
    headers = {"ce-specversion": "1.0", "ce-id": "p", "ce-source": "/t", "ce-type": "poison",
               "content-type": "application/json"}
    assert httpx.post(mesh.url + "/", headers=headers, content=b'{"name": "\\ud800"}').status_code == 202
    wait_for(lambda: len(mesh.api("GET", "/v1/dead-letters").json()["dead_letters"]) == 2, 30,
             message="both raising functions' events dead-lettered")
    wait_for(lambda: lines(out) == ["?", "?"], 30, message="both echoes, the surrogate replaced")
    for name in ("raises-1", "raises-4", "echoes-1", "echoes-4"):
        assert mesh.status(name)["failed"] <= 1  # one attempt each, no hang to a timeout
    letters = mesh.api("GET", "/v1/dead-letters").json()["dead_letters"]
    assert all("ValueError" in d["error"] and d["attempts"] == 1 for d in letters), letters
