"""Retries, dead letters and at-least-once delivery through a real mesh process."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
from support import append_manifest, wait_for, write_manifest


def test_flaky_succeeds_on_the_third_attempt(mesh, tmp_path):
    state = tmp_path / "attempts.json"
    manifest = write_manifest(tmp_path, f"""
functions:
  flaky:
    handler: {{functions}}/flaky/handler.py:handle
    on: [{{{{type: try}}}}]
    env: {{{{FAIL_TIMES: 2, FLAKY_STATE: "{state}"}}}}
    delivery: {{{{retries: 3, delay: 50ms}}}}
""")
    mesh.cli("deploy", "-f", str(manifest))
    event_id = mesh.cli("send", "--type", "try", "--source", "/t").stdout.split()[0]
    wait_for(lambda: mesh.status("flaky")["delivered"] == 1, 15, message="flaky to succeed")
    status = mesh.status("flaky")
    assert status["failed"] == 2 and status["retried"] == 2 and status["dead_lettered"] == 0
    assert json.loads(state.read_text()) == {event_id: 3}
    assert "succeeded on attempt 3" in mesh.cli("logs", "flaky").stdout


def test_always_failing_handler_ends_in_the_dead_letters(mesh, tmp_path):
    manifest = write_manifest(tmp_path, """
functions:
  broken:
    handler: {fixtures}/fail/handler.py:handle
    on: [{{type: doomed}}]
    delivery: {{retries: 2, delay: 20ms}}
""")
    mesh.cli("deploy", "-f", str(manifest))
    event_id = mesh.cli("send", "--type", "doomed", "--source", "/t").stdout.split()[0]
    wait_for(lambda: mesh.status("broken")["dead_lettered"] == 1, 15, message="the dead letter")
    status = mesh.status("broken")
    assert status["failed"] == 3 and status["delivered"] == 0
    letters = mesh.api("GET", "/v1/dead-letters", params={"function": "broken"}).json()["dead_letters"]
    assert len(letters) == 1
    letter = letters[0]
    assert letter["event"]["attributes"]["id"] == event_id
    assert letter["attempts"] == 3
    assert "this function always fails" in letter["error"]
    assert letter["event"]["attributes"]["fmesherrordest"] == "function:broken"


def test_dead_letters_go_to_the_named_function(mesh, tmp_path):
    out = tmp_path / "dead.txt"
    manifest = write_manifest(tmp_path, f"""
functions:
  broken:
    handler: {{fixtures}}/fail/handler.py:handle
    on: [{{{{type: doomed}}}}]
    delivery: {{{{retries: 0, dead_letter: morgue}}}}
  morgue:
    handler: {{fixtures}}/append/handler.py:handle
    env: {{{{APPEND_TO: "{out}"}}}}
""")
    mesh.cli("deploy", "-f", str(manifest))
    event_id = mesh.cli("send", "--type", "doomed", "--source", "/t").stdout.split()[0]
    wait_for(lambda: out.exists() and event_id in out.read_text(), 15, message="the dead letter function")
    assert mesh.status("broken")["dead_lettered"] == 0  # handed on, not stored
    assert mesh.status("morgue")["delivered"] == 1


def test_a_slow_event_does_not_block_the_others(mesh, tmp_path):
    manifest = write_manifest(tmp_path, """
functions:
  slow:
    handler: {fixtures}/slow/handler.py:handle
    on: [{{type: nap}}]
    scale: {{max: 3}}
    timeout: 30s
""")
    mesh.cli("deploy", "-f", str(manifest))
    mesh.cli("send", "--type", "nap", "--source", "/t", "--data", '{"sleep": 20}')
    for _ in range(3):
        mesh.cli("send", "--type", "nap", "--source", "/t", "--data", '{"sleep": 0}')
    wait_for(lambda: mesh.status("slow")["delivered"] == 3, 15, message="the quick events to pass the slow one")
    assert mesh.status("slow")["inflight"] == 1


def test_timeout_fails_the_attempt_and_recycles_the_replica(mesh, tmp_path):
    manifest = write_manifest(tmp_path, """
functions:
  slow:
    handler: {fixtures}/slow/handler.py:handle
    on: [{{type: nap}}]
    timeout: 300ms
    delivery: {{retries: 1, delay: 10ms}}
""")
    mesh.cli("deploy", "-f", str(manifest))
    mesh.cli("send", "--type", "nap", "--source", "/t", "--data", '{"sleep": 30}')
    wait_for(lambda: mesh.status("slow")["dead_lettered"] == 1, 15, message="the timed-out event's dead letter")
    letters = mesh.api("GET", "/v1/dead-letters", params={"function": "slow"}).json()["dead_letters"]
    assert "did not finish within 0.3s" in letters[0]["error"]
    assert "timed out after 0.3s" in mesh.cli("logs", "slow").stdout


def test_reply_loops_stop_at_the_hop_limit(mesh, tmp_path):
    # echo replies to its own replies: type x → x.reply → x.reply.reply ... all match `prefix: x`
    manifest = write_manifest(tmp_path, """
functions:
  echo:
    handler: {functions}/hello/handler.py:handle
    on: [{{type: {{prefix: loop}}}}]
""")
    mesh.cli("deploy", "-f", str(manifest))
    mesh.cli("send", "--type", "loop", "--source", "/t")
    wait_for(lambda: mesh.status("echo")["dead_lettered"] == 1, 20, message="the loop to be cut")
    status = mesh.status("echo")
    assert status["delivered"] == 17  # the original plus 16 hops of replies
    letter = mesh.api("GET", "/v1/dead-letters").json()["dead_letters"][0]
    assert "hop limit 16" in letter["reason"]
    assert letter["event"]["attributes"]["fmeshhops"] == 17
    # The trail shows the reply that was cut, not stored, under the last reply that was.
    cut = letter["event"]["attributes"]["id"]
    [alone] = mesh.api("GET", f"/v1/trail/{cut}").json()["trail"]
    assert alone["stored"] is False and alone["outcome"] == {"function:echo": "dead-lettered"}
    [parent] = mesh.api("GET", f"/v1/trail/{alone['parent']['id']}").json()["trail"]
    assert parent["stored"] is True and [r["id"] for r in parent["replies"]] == [cut]
    assert f"reply {cut}  not stored" in mesh.cli("trace", parent["id"]).stdout


def test_every_accepted_event_survives_sigkill(mesh_factory, tmp_path):
    """1,000 events, the mesh SIGKILLed midway: every id that got a 202 reaches the function."""
    out = tmp_path / "ids.txt"
    mesh = mesh_factory().start()
    manifest = append_manifest(tmp_path, out, "record", "{max: 2, concurrency: 4}")
    mesh.cli("deploy", "-f", str(manifest))
    accepted = asyncio.run(send_many(mesh, 1000, kill_after=500))
    assert 500 <= len(accepted) < 1000, f"expected the kill to cut the run short, got {len(accepted)}"
    mesh.start()
    wait_for(lambda: accepted <= _ids(out), 60, message="every accepted id to reach the function")


async def send_many(mesh, count: int, kill_after: int) -> set[str]:
    accepted: set[str] = set()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            event_id = f"evt-{i}"
            headers = {"ce-id": event_id, "ce-source": "/test", "ce-type": "record", "ce-specversion": "1.0",
                       "content-type": "application/json"}
            try:
                response = await client.post(mesh.url + "/", headers=headers, content=b'{"i": %d}' % i)
            except httpx.HTTPError:
                continue  # the mesh is gone: this one was never accepted
            if response.status_code == 202:
                accepted.add(event_id)
                if len(accepted) == kill_after:
                    mesh.kill()

    async with httpx.AsyncClient(timeout=5) as client:
        await asyncio.gather(*(worker(client) for _ in range(16)))
    return accepted


def _ids(path: Path) -> set[str]:
    return set(path.read_text().split()) if path.exists() else set()
