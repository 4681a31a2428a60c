"""The event trail through a real mesh: `fmesh trace`, `fmesh events list --unrouted` and
`fmesh events tail`, for each way an event's path can end."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from urllib.parse import quote

import httpx
import pytest
from support import FMESH, Mesh, wait_for, write_manifest

MANIFEST = """
functions:
  hello:
    handler: {functions}/hello/handler.py:handle
    on: [{{type: greet}}]
  greeted:
    handler: {fixtures}/append/handler.py:handle
    on: [{{type: greet.reply}}]
    env: {{APPEND_TO: "{out}"}}
  flaky:
    handler: {functions}/flaky/handler.py:handle
    on: [{{type: try}}]
    env: {{FAIL_TIMES: 2, FLAKY_STATE: "{state}"}}
    delivery: {{retries: 3, delay: 50ms}}
  broken:
    handler: {fixtures}/fail/handler.py:handle
    on: [{{type: doomed}}]
    delivery: {{retries: 1, delay: 20ms}}
  patient:
    handler: {fixtures}/fail/handler.py:handle
    on: [{{type: later}}]
    delivery: {{retries: 2, delay: 1h}}
"""


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trace")
    manifest = write_manifest(folder, MANIFEST.replace("{out}", str(folder / "greeted.txt"))
                              .replace("{state}", str(folder / "flaky.json")))
    mesh = Mesh(folder / "data").start()
    mesh.cli("deploy", "-f", str(manifest))
    yield mesh
    mesh.stop()


def send(mesh: Mesh, event_type: str) -> str:
    return mesh.cli("send", "--type", event_type, "--source", "/trace-test", "--data", '{"name": "trail"}'
                    ).stdout.split()[0]


def trail_of(mesh: Mesh, event_id: str) -> list[dict]:
    answer = mesh.api("GET", f"/v1/trail/{event_id}")
    return answer.json()["trail"] if answer.status_code == 200 else []


def settled(mesh: Mesh, event_id: str, subscription: str, outcome: str) -> dict | None:
    """The trail entry of `event_id` once its outcome in `subscription` is `outcome`."""
    entries = trail_of(mesh, event_id)
    if entries and entries[0]["outcome"].get(subscription) == outcome:
        return entries[0]
    return None


def test_a_delivered_event_and_the_reply_it_routed_on(traced):
    event_id = send(traced, "greet")
    entry = wait_for(lambda: (e := settled(traced, event_id, "function:hello", "delivered"))
                     and e["replies"] and e["replies"][0]["outcome"].get("function:greeted") == "delivered"
                     and e, 20, message="the greeting and its reply to be delivered")
    assert entry["sender"] == "anonymous" and entry["routed"] == ["function:hello"]
    assert [s["kind"] for s in entry["steps"]] == ["reply", "delivered"]
    delivered = entry["steps"][1]
    assert delivered["attempt"] == 1 and delivered["duration_ms"] > 0
    reply = entry["replies"][0]
    assert reply["type"] == "greet.reply" and reply["sender"] == "function:hello"
    assert reply["parent"] == {"id": event_id, "source": "/trace-test"}
    assert entry["steps"][0]["detail"] == reply["id"]

    text = traced.cli("trace", event_id).stdout
    assert f"{event_id}  greet  from /trace-test  sent by anonymous" in text
    assert "├─ function:hello: delivered" in text
    assert f"└─ reply {reply['id']}  greet.reply" in text
    assert "   └─ function:greeted: delivered" in text
    # the reply's own trace names the event it answers
    assert f"(reply to {event_id})" in traced.cli("trace", reply["id"]).stdout


def test_a_retried_then_delivered_event(traced):
    event_id = send(traced, "try")
    entry = wait_for(lambda: settled(traced, event_id, "function:flaky", "delivered"), 20,
                     message="flaky to succeed on its third attempt")
    steps = entry["steps"]
    assert [(s["kind"], s["attempt"]) for s in steps] == [("retrying", 1), ("retrying", 2), ("delivered", 3)]
    assert steps[0]["status"] == 500 and "failing attempt 1" in steps[0]["error"]
    assert steps[0]["due"] <= steps[1]["at"] + 0.5
    text = traced.cli("trace", event_id).stdout
    assert "retrying, attempt 1" in text and "delivered, attempt 3" in text


def test_a_dead_lettered_event_and_its_replay(traced):
    event_id = send(traced, "doomed")
    entry = wait_for(lambda: settled(traced, event_id, "function:broken", "dead-lettered"), 20,
                     message="the dead letter")
    assert [(s["kind"], s["attempt"]) for s in entry["steps"]] == [("retrying", 1), ("dead-lettered", 2)]
    assert "this function always fails" in entry["steps"][1]["error"]
    assert "function:broken: dead-lettered" in traced.cli("trace", event_id).stdout

    letters = traced.api("GET", "/v1/dead-letters", params={"function": "broken"}).json()["dead_letters"]
    letter = next(d for d in letters if d["event"]["attributes"]["id"] == event_id)
    traced.cli("dead-letters", "--replay", str(letter["id"]))
    entry = wait_for(lambda: (e := trail_of(traced, event_id)[0]) and len(e["steps"]) >= 5 and e, 20,
                     message="the replayed event to be dead-lettered again")
    kinds = [s["kind"] for s in entry["steps"]]
    assert kinds == ["retrying", "dead-lettered", "replayed", "retrying", "dead-lettered"]


def test_an_event_still_retrying_says_when_it_is_due(traced):
    event_id = send(traced, "later")
    entry = wait_for(lambda: settled(traced, event_id, "function:patient", "retrying"), 20,
                     message="the first failed attempt")
    assert entry["steps"][-1]["due"] > entry["steps"][-1]["at"] + 30  # an hour, capped at the policy's max_delay
    assert "function:patient: retrying, attempt 2 due at" in traced.cli("trace", event_id).stdout


def test_an_event_that_matched_nothing(traced):
    event_id = send(traced, "nobody.listens")
    entry = wait_for(lambda: (t := trail_of(traced, event_id)) and t[0], 10, message="the unrouted event")
    assert entry["routed"] == [] and entry["outcome"] == {}
    assert "matched nothing" in traced.cli("trace", event_id).stdout
    listed = json.loads(traced.cli("events", "list", "--unrouted", "--json").stdout)["events"]
    assert event_id in [e["id"] for e in listed]
    assert event_id in traced.cli("events", "list", "--unrouted").stdout
    assert f"{event_id}  nobody.listens  from /trace-test  sent by anonymous → matched nothing" in traced.cli(
        "events", "list", "-n", "5").stdout


def test_an_unknown_id_is_a_one_line_error(traced):
    result = traced.cli("trace", "no-such-event", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no event with id 'no-such-event' in the trail" in result.stderr
    assert "(it keeps the last 100,000 events, for 1d)" in result.stderr


def test_tail_streams_matching_events_and_their_outcomes(traced):
    watcher = subprocess.Popen([*FMESH, "events", "tail", "--filter", "type=greet", "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=traced.env())
    lines: queue.Queue[str] = queue.Queue()
    said: list[str] = []
    threading.Thread(target=lambda: [lines.put(line) for line in watcher.stdout], daemon=True).start()
    threading.Thread(target=lambda: [said.append(line) for line in watcher.stderr], daemon=True).start()
    try:
        wait_for(lambda: any("watching events at" in line for line in said), 20, message="the tail to connect")
        skipped = send(traced, "try")  # another type: not shown
        event_id = send(traced, "greet")
        seen = []

        def delivered() -> bool:
            while not lines.empty():
                seen.append(json.loads(lines.get()))
            return any(r["kind"] == "delivered" and r["id"] == event_id and r["subscription"] == "function:hello"
                       for r in seen)

        wait_for(delivered, 20, message="the tail to show the greeting delivered")
        assert {"kind": "accepted", "id": event_id, "routed": ["function:hello"]}.items() <= seen[0].items()
        assert [r["kind"] for r in seen[1:]] == ["reply", "delivered"]
        assert all(r["type"] == "greet" for r in seen) and skipped not in [r["id"] for r in seen]
    finally:
        watcher.terminate()
        watcher.wait(10)


def test_the_trail_survives_a_restart(traced):
    event_id = send(traced, "greet")
    wait_for(lambda: settled(traced, event_id, "function:hello", "delivered"), 20, message="the greeting")
    traced.stop()
    traced.start()
    entry = trail_of(traced, event_id)[0]
    assert entry["outcome"] == {"function:hello": "delivered"} and entry["replies"]


def test_an_id_with_slashes_and_terminal_escapes_is_traced_and_shown_as_text(traced):
    event_id = "order/42\u202e"  # a terminal escape is refused at the ingress (a control character)
    answer = httpx.post(traced.url + "/", json={"specversion": "1.0", "id": event_id, "source": "/x\u202e",
                                                "type": "greet"},
                        headers={"content-type": "application/cloudevents+json"})
    assert answer.status_code == 202
    wait_for(lambda: settled(traced, quote(event_id, safe=""), "function:hello", "delivered"), 20,
             message="the event with a hostile id")
    text = traced.cli("trace", event_id).stdout
    assert "order/42\\u202e  greet  from /x\\u202e" in text
    assert "\u202e" not in text


def test_a_mesh_without_a_trail_says_so(mesh_factory):
    mesh = mesh_factory(extra=["--trail-retention", "0"]).start()
    result = mesh.cli("trace", "any-id", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "this mesh keeps no event trail (it runs with --trail-retention 0)" in result.stderr
    assert not (mesh.data_dir / "trail.db").exists()
