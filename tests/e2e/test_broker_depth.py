"""Issue 3 through a real mesh: SDK bindings byte-exact, ordered delivery, redrive, retry
state across SIGKILL, and a 50,000-event burst with flat memory."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import tempfile
from pathlib import Path

import httpx
from cloudevents.core.bindings import http as sdk_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from support import append_manifest, json_lines, wait_for, write_manifest


def record_manifest(tmp_path, out):
    return write_manifest(tmp_path, f"""
functions:
  record:
    handler: {{fixtures}}/record/handler.py:handle
    on: [{{{{type: {{{{prefix: sdk.}}}}}}}}]
    env: {{{{RECORD_TO: "{out}"}}}}
""")


def records(path):
    return json_lines(path)


def sdk_events():
    return [
        CloudEvent({"type": "sdk.json", "source": "/sdk", "subject": "s", "datacontenttype": "application/json",
                    "region": "eu", "count": "7"}, {"a": [1, 2, {"b": None}]}),
        CloudEvent({"type": "sdk.text", "source": "/sdk", "datacontenttype": "text/plain; charset=utf-8"},
                   "caf\u00e9 \u2615\nline two"),
        CloudEvent({"type": "sdk.bytes", "source": "/sdk", "datacontenttype": "application/octet-stream"},
                   bytes(range(256))),
    ]


def expected(sdk_event: CloudEvent) -> dict:
    attributes = dict(sdk_event.get_attributes())
    attributes["time"] = attributes["time"].isoformat().replace("+00:00", "Z")
    attributes["fmeshsender"] = "anonymous"  # the one attribute the mesh adds: who published it
    data = sdk_event.get_data()
    payload = data if isinstance(data, bytes) else data.encode() if isinstance(data, str) else (
        json.dumps(data, separators=(",", ":")).encode())
    return {"attributes": attributes, "payload": base64.b64encode(payload).decode()}


def test_sdk_events_reach_a_function_byte_exact_in_every_mode(mesh, tmp_path):
    out = tmp_path / "seen.jsonl"
    mesh.cli("deploy", "-f", str(record_manifest(tmp_path, out)))
    sent = []
    for event in sdk_events():  # binary mode: data bytes exactly as sent
        message = sdk_http.to_binary_event(event)
        assert httpx.post(mesh.url, headers=message.headers, content=message.body).status_code == 202
        exp = expected(event)
        exp["payload"] = base64.b64encode(message.body).decode()
        sent.append(exp)
    for event in sdk_events():  # structured mode
        message = sdk_http.to_structured_event(event)
        assert httpx.post(mesh.url, headers=message.headers, content=message.body).status_code == 202
        sent.append(expected(event))
    batch = sdk_events()  # batch mode: an array of structured events
    body = "[" + ",".join(JSONFormat().write(e).decode() for e in batch) + "]"
    response = httpx.post(mesh.url, headers={"content-type": "application/cloudevents-batch+json"}, content=body)
    assert response.status_code == 202 and response.json()["accepted"] == 3
    sent.extend(expected(e) for e in batch)
    wait_for(lambda: len(records(out)) == len(sent), 15, message="all nine events")
    by_id = {r["attributes"]["id"]: r for r in records(out)}
    for exp in sent:
        seen = by_id[exp["attributes"]["id"]]
        # the mesh adds a trace context to an event sent without one (fmesh.tracecontext)
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", seen["attributes"].pop("traceparent"))
        assert seen == exp


def test_ordered_delivery_keeps_each_key_in_order_while_keys_interleave(mesh, tmp_path):
    out = tmp_path / "order.txt"
    manifest = write_manifest(tmp_path, f"""
functions:
  ordered:
    handler: {{fixtures}}/ordered/handler.py:handle
    on: [{{{{type: seq}}}}]
    env: {{{{APPEND_TO: "{out}"}}}}
    scale: {{{{max: 2, concurrency: 5}}}}
    delivery: {{{{ordering: ordered}}}}
""")
    mesh.cli("deploy", "-f", str(manifest))
    events = [{"specversion": "1.0", "id": f"e{i}", "source": "/t", "type": "seq",
               "partitionkey": f"k{i % 10}", "data": {"seq": i // 10}} for i in range(1000)]
    for start in range(0, 1000, 100):
        response = httpx.post(mesh.url, headers={"content-type": "application/cloudevents-batch+json"},
                              json=events[start:start + 100])
        assert response.status_code == 202
    wait_for(lambda: out.exists() and len(out.read_text().splitlines()) == 1000, 60, message="1,000 events")
    lines = [line.split() for line in out.read_text().splitlines()]
    for key in {k for k, _ in lines}:
        assert [int(s) for k, s in lines if k == key] == list(range(100)), f"{key} out of order"
    first_hundred_keys = {k for k, _ in lines[:100]}
    assert len(first_hundred_keys) > 1, "keys should proceed in parallel, not one after another"


def test_dead_letters_list_replay_and_purge(mesh, tmp_path):
    out, gate = tmp_path / "ids.txt", tmp_path / "closed"
    gate.touch()
    manifest = write_manifest(tmp_path, f"""
functions:
  gate:
    handler: {{fixtures}}/gate/handler.py:handle
    on: [{{{{type: knock}}}}]
    env: {{{{APPEND_TO: "{out}", GATE_CLOSED: "{gate}"}}}}
    delivery: {{{{retries: 1, delay: 10ms}}}}
""")
    mesh.cli("deploy", "-f", str(manifest))
    ids = [mesh.cli("send", "--type", "knock", "--source", "/t", "--data", f'{{"n": {n}}}').stdout.split()[0]
           for n in range(3)]
    wait_for(lambda: mesh.status("gate")["dead_lettered"] == 3, 15, message="three dead letters")
    listing = json.loads(mesh.cli("dead-letters", "gate", "--json").stdout)["dead_letters"]
    assert sorted(d["event"]["attributes"]["id"] for d in listing) == sorted(ids)
    assert all(d["attempts"] == 2 and "gate closed" in d["error"] for d in listing)
    table = mesh.cli("dead-letters").stdout
    assert "function:gate" in table and "gave up after 2 attempts" in table
    gate.unlink()  # fixed: replay one by id, then the rest
    first = next(d for d in listing if d["event"]["attributes"]["id"] == ids[0])
    assert "replayed 1" in mesh.cli("dead-letters", "--replay", str(first["id"])).stdout
    wait_for(lambda: out.exists() and ids[0] in out.read_text(), 10, message="the replayed event")
    assert "replayed 2" in mesh.cli("dead-letters", "--replay-all", "gate").stdout
    wait_for(lambda: set(out.read_text().split()) == set(ids), 10, message="all replayed events")
    assert mesh.status("gate")["dead_lettered"] == 0
    missing = mesh.cli("dead-letters", "--replay", "424242", check=False)
    assert missing.returncode != 0 and "no dead letter with id 424242" in missing.stderr
    assert "replayed" not in missing.stdout  # not "replayed 0" beside the error
    gate.touch()
    mesh.cli("send", "--type", "knock", "--source", "/t")
    wait_for(lambda: mesh.status("gate")["dead_lettered"] == 1, 15, message="a new dead letter")
    assert "purged 1" in mesh.cli("dead-letters", "gate", "--purge").stdout
    assert json.loads(mesh.cli("dead-letters", "--json").stdout)["dead_letters"] == []


def test_retry_schedule_survives_sigkill(mesh_factory, tmp_path):
    """A restarted mesh resumes the backoff: it neither retries at once nor forgets the attempt."""
    out, gate = tmp_path / "attempts.txt", tmp_path / "closed"
    gate.touch()
    mesh = mesh_factory().start()
    manifest = write_manifest(tmp_path, f"""
functions:
  stamp:
    handler: {{fixtures}}/stamp/handler.py:handle
    on: [{{{{type: later}}}}]
    env: {{{{APPEND_TO: "{out}", GATE_CLOSED: "{gate}"}}}}
    delivery: {{{{retries: 2, backoff: linear, delay: 6s}}}}
""")
    mesh.cli("deploy", "-f", str(manifest))
    mesh.cli("send", "--type", "later", "--source", "/t")
    wait_for(lambda: out.exists() and len(out.read_text().split()) == 1, 10, message="the first attempt")
    left = list(Path(tempfile.gettempdir()).glob(f"fmesh-{mesh.process.pid}-*"))
    assert len(left) == 1  # the node's socket folder, which a SIGKILL leaves
    mesh.kill()
    assert not left[0].exists()  # the test's Mesh removes it: tests leave no temp dirs behind
    mesh.start()
    wait_for(lambda: len(out.read_text().split()) == 2, 20, message="the second attempt")
    first, second = map(float, out.read_text().split())
    assert second - first >= 3.0, "the retry after the restart came before its backoff (delay 6 s, jitter >= 50%)"
    wait_for(lambda: len(out.read_text().split()) == 3, 30, message="the third attempt")
    wait_for(lambda: mesh.status("stamp")["dead_lettered"] == 1, 10, message="the dead letter")
    [letter] = json.loads(mesh.cli("dead-letters", "--json").stdout)["dead_letters"]
    assert letter["attempts"] == 3  # the attempt before the kill still counts


def test_a_50000_event_burst_keeps_memory_flat_and_loses_nothing(mesh_factory, tmp_path):
    out = tmp_path / "ids.txt"
    mesh = mesh_factory().start()
    manifest = append_manifest(tmp_path, out, "burst", "{max: 2, concurrency: 8}")
    mesh.cli("deploy", "-f", str(manifest))
    payload = "x" * 1024
    # A first, smaller burst: what any burst costs once (replicas, caches, the allocator's
    # arenas, SQLite's page cache) is in the baseline, and what is left to see is growth
    # with the burst's size.
    asyncio.run(send_burst(mesh.url, 5_000, payload, first_id=50_000))
    wait_for(lambda: mesh.status("append")["delivered"] == 5_000, 120, interval=0.5, message="5,000 deliveries")
    baseline = rss_peak_kib(mesh.process.pid)
    asyncio.run(send_burst(mesh.url, 50_000, payload))
    wait_for(lambda: mesh.status("append")["delivered"] == 55_000, 240, interval=1, message="50,000 deliveries")
    ids = out.read_text().split()
    assert len(set(ids)) == 55_000
    peak = rss_peak_kib(mesh.process.pid)
    held_in_memory = 50_000 * 1024 // 1024  # KiB the payloads alone would need, 50 MB
    print(f"mesh peak RSS: {peak / 1024:.1f} MiB (before the burst {baseline / 1024:.1f} MiB)")
    assert peak - baseline < held_in_memory * 0.6, f"peak grew by {(peak - baseline) / 1024:.0f} MiB"


async def send_burst(url: str, count: int, payload: str, batch: int = 500, first_id: int = 0) -> None:
    async def post(client, start):
        events = [{"specversion": "1.0", "id": f"b{first_id + i}", "source": "/t", "type": "burst", "data": payload}
                  for i in range(start, min(start + batch, count))]
        response = await client.post(url, json=events, headers={"content-type": "application/cloudevents-batch+json"})
        assert response.status_code == 202, response.text

    async with httpx.AsyncClient(timeout=60) as client:
        for start in range(0, count, batch * 4):
            await asyncio.gather(*(post(client, s) for s in range(start, min(start + batch * 4, count), batch)))


def rss_peak_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")
