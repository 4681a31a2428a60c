"""Bridges between meshes, each a real `fmesh up` process on loopback: events forwarded
exactly once, waiting durably while the other mesh is down, and never looping."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import httpx
from support import FIXTURES, wait_for

APPEND = FIXTURES / "functions" / "append" / "handler.py"


def mesh_manifest(folder: Path, name: str, out: Path, bridges: dict[str, str]) -> Path:
    """A mesh with an `append` function on com.shop.* and a bridge to each of `bridges`."""
    text = f"""functions:
  append:
    handler: {APPEND}:handle
    on: [{{type: {{prefix: com.shop.}}}}]
    env: {{APPEND_TO: "{out}"}}
    scale: {{max: 2, concurrency: 8}}
bridges:
"""
    for bridge, url in bridges.items():
        text += f"""  {bridge}:
    to: {url}
    filter: {{type: {{prefix: com.shop.}}}}
"""
    path = folder / f"{name}.yaml"
    path.write_text(text if bridges else text.replace("bridges:\n", ""))
    return path


def received(out: Path) -> Counter:
    return Counter(out.read_text().split()) if out.exists() else Counter()


def send_batches(url: str, ids: list[str], size: int = 100) -> None:
    with httpx.Client(timeout=30) as client:
        for start in range(0, len(ids), size):
            batch = [{"specversion": "1.0", "id": i, "source": "/shop", "type": "com.shop.order", "data": {"n": i}}
                     for i in ids[start:start + size]]
            answer = client.post(url + "/", content=json.dumps(batch),
                                 headers={"content-type": "application/cloudevents-batch+json"})
            assert answer.status_code == 202, answer.text


def bridge(mesh, name: str) -> dict:
    report = mesh.api("GET", "/v1/status").json()
    return next(b for b in report["bridges"] if b["name"] == name)


def test_two_meshes_bridged_both_ways_deliver_once_and_wait_out_a_stopped_peer(mesh_factory, tmp_path):
    a = mesh_factory(extra=["--mesh-id", "cloud-a"])
    b = mesh_factory(extra=["--mesh-id", "cloud-b"])
    out_a, out_b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.start("-f", str(mesh_manifest(tmp_path, "a", out_a, {"to-b": b.url})))
    b.start("-f", str(mesh_manifest(tmp_path, "b", out_b, {"to-a": a.url})))
    ids = [f"order-{i}" for i in range(1000)]

    send_batches(a.url, ids[:500])
    wait_for(lambda: len(received(out_b)) >= 100, 60, message="the first events across the bridge")
    b.stop()  # mid-stream: what A still has to forward waits in A's event log
    down_since = time.monotonic()
    send_batches(a.url, ids[500:])
    wait_for(lambda: bridge(a, "to-b")["state"] == "retrying" and time.monotonic() - down_since >= 20, 60,
             interval=0.5, message="B to be down for 20 s, with A's bridge retrying")
    waiting = bridge(a, "to-b")
    assert waiting["backlog"] > 0 and waiting["oldest_waiting_s"] >= 15 and b.url.split("//")[1] in \
        waiting["last_error"], waiting
    b.start()

    wait_for(lambda: set(received(out_b)) == set(ids), 90, interval=0.2, message="all 1,000 events at B")
    wait_for(lambda: bridge(b, "to-a")["backlog"] == 0 and bridge(a, "to-b")["backlog"] == 0, 30,
             message="both bridges drained")
    duplicates_b = sum(n - 1 for n in received(out_b).values())
    duplicates_a = sum(n - 1 for n in received(out_a).values())
    print(f"\nduplicates at B's function: {duplicates_b}; at A's: {duplicates_a}; "
          f"B dropped {b.api('GET', '/v1/status').json()['bridged_in']}")
    assert duplicates_b == 0 and duplicates_a == 0
    assert set(received(out_a)) == set(ids)  # A's own function once each: nothing came back from B
    back = bridge(b, "to-a")  # its counts start again at B's restart
    assert back["forwarded"] == 0 and back["looped"] > 0 and back["dead_lettered"] == 0

    # the trail at each end: A forwarded it; B says where it came from, and that it did not send it back
    [at_a] = a.api("GET", f"/v1/trail/{ids[0]}").json()["trail"]
    assert at_a["outcome"] == {"function:append": "delivered", "bridge:to-b": "delivered"}
    [at_b] = b.api("GET", f"/v1/trail/{ids[0]}").json()["trail"]
    assert at_b["path"] == "cloud-a"
    assert at_b["outcome"] == {"function:append": "delivered", "bridge:to-a": "not sent"}
    assert "bridged from cloud-a" in b.cli("trace", ids[0]).stdout


def test_three_meshes_in_a_ring_do_not_loop(mesh_factory, tmp_path):
    meshes = {name: mesh_factory(extra=["--mesh-id", name]) for name in ("ring-a", "ring-b", "ring-c")}
    outs = {name: tmp_path / f"{name}.txt" for name in meshes}
    after = {"ring-a": "ring-b", "ring-b": "ring-c", "ring-c": "ring-a"}
    for name, mesh in meshes.items():
        peer = meshes[after[name]]
        mesh.start("-f", str(mesh_manifest(tmp_path, name, outs[name], {f"to-{after[name]}": peer.url})))
    ids = [f"ring-{i}" for i in range(100)]
    send_batches(meshes["ring-a"].url, ids)
    for name in meshes:
        wait_for(lambda name=name: set(received(outs[name])) == set(ids), 60, message=f"all events at {name}")
    c_to_a = meshes["ring-c"]
    wait_for(lambda: bridge(c_to_a, "to-ring-a")["looped"] == 100, 30, message="C refusing to send back to A")
    for name, mesh in meshes.items():
        assert all(n == 1 for n in received(outs[name]).values()), f"{name} saw an event twice"
        assert mesh.api("GET", "/v1/status").json()["bridged_in"]["looped"] == 0  # stopped before sending
    assert bridge(meshes["ring-a"], "to-ring-b")["forwarded"] == 100


class LossyProxy:
    """A real HTTP proxy in front of a mesh that forwards every request but, for every
    `drop_every`-th one, hangs up instead of passing the answer back: a lost response."""

    def __init__(self, target: str, drop_every: int = 2) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.forwarded = 0
        self.dropped = 0
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                answer = httpx.get(target + self.path, timeout=10)
                self._answer(answer)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                answer = httpx.post(target + self.path, content=body, headers=headers, timeout=10)
                with lock:
                    proxy.forwarded += 1
                    drop = proxy.forwarded % drop_every == 0
                    proxy.dropped += drop
                if drop:
                    self.close_connection = True  # stored at the mesh, but the sender never hears so
                    return
                self._answer(answer)

            def _answer(self, answer: httpx.Response) -> None:
                self.send_response(answer.status_code)
                self.send_header("content-length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_retry_after_a_lost_response_is_dropped_as_a_duplicate(mesh_factory, tmp_path):
    b = mesh_factory(extra=["--mesh-id", "lossy-b"])
    out_b = tmp_path / "b.txt"
    b.start("-f", str(mesh_manifest(tmp_path, "b", out_b, {})))
    proxy = LossyProxy(b.url)
    try:
        a = mesh_factory(extra=["--mesh-id", "lossy-a"])
        a.start("-f", str(mesh_manifest(tmp_path, "a", tmp_path / "a.txt", {"to-b": proxy.url})))
        ids = [f"lossy-{i}" for i in range(200)]
        send_batches(a.url, ids)
        wait_for(lambda: set(received(out_b)) == set(ids) and bridge(a, "to-b")["backlog"] == 0, 60,
                 message="all events at B, and A's bridge drained")
    finally:
        proxy.close()
    dropped = b.api("GET", "/v1/status").json()["bridged_in"]["duplicates"]
    print(f"\nproxy lost {proxy.dropped} answers; B dropped {dropped} duplicates; "
          f"B's function saw {sum(received(out_b).values())} events for {len(ids)} sent")
    assert proxy.dropped >= 5 and dropped >= proxy.dropped  # each lost answer: one or a batch of events again
    assert all(n == 1 for n in received(out_b).values())


def test_duplicates_are_dropped_across_a_restart_of_the_receiver(mesh_factory, tmp_path):
    b = mesh_factory(extra=["--mesh-id", "dedup-b"])
    out = tmp_path / "b.txt"
    b.start("-f", str(mesh_manifest(tmp_path, "b", out, {})))
    bridged = {"ce-specversion": "1.0", "ce-id": "once", "ce-source": "/shop", "ce-type": "com.shop.order",
               "ce-fmeshpath": "dedup-a"}
    assert httpx.post(b.url + "/", headers=bridged).status_code == 202
    wait_for(lambda: received(out) == Counter({"once": 1}), 20, message="the first copy delivered")
    b.stop()
    b.start()
    assert httpx.post(b.url + "/", headers=bridged).status_code == 202  # the sender may stop retrying
    assert httpx.post(b.url + "/", headers={**bridged, "ce-id": "other"}).status_code == 202
    wait_for(lambda: "other" in received(out), 20, message="a new event after the restart")
    assert received(out)["once"] == 1
    assert b.api("GET", "/v1/status").json()["bridged_in"]["duplicates"] == 1


def test_replies_and_dead_letters_can_cross_a_bridge(mesh_factory, tmp_path):
    b = mesh_factory(extra=["--mesh-id", "far-b"])
    out_b, letters = tmp_path / "b.txt", tmp_path / "letters.jsonl"
    b_manifest = mesh_manifest(tmp_path, "b", out_b, {})
    b_manifest.write_text(b_manifest.read_text() + f"""  letters:
    handler: {FIXTURES / "functions" / "record" / "handler.py"}:handle
    on: [{{type: doomed}}]
    env: {{RECORD_TO: "{letters}"}}
""")
    b.start("-f", str(b_manifest))
    (tmp_path / "reply").mkdir()
    (tmp_path / "reply" / "handler.py").write_text(
        "from cloudevents.core.v1.event import CloudEvent\n\n"
        "def handle(event):\n"
        "    return CloudEvent({'type': 'com.shop.reply', 'source': '/a', 'id': 'reply-' + event['id']})\n")
    manifest = tmp_path / "a.yaml"
    manifest.write_text(f"""functions:
  answers:
    handler: reply/handler.py:handle
    on: [{{type: ask}}]
    reply_to: to-b
  fails:
    handler: {FIXTURES / "functions" / "fail" / "handler.py"}:handle
    on: [{{type: doomed}}]
    delivery: {{retries: 0, dead_letter: to-b}}
bridges:
  to-b:
    to: {b.url}
    filter: {{type: nothing.matches.this}}
""")
    a = mesh_factory(extra=["--mesh-id", "near-a"])
    a.start("-f", str(manifest))
    a.cli("send", "--type", "ask", "--source", "/t", "--id", "q1")
    a.cli("send", "--type", "doomed", "--source", "/t", "--id", "d1")
    wait_for(lambda: "reply-q1" in received(out_b), 30, message="the reply, forwarded to B")
    wait_for(lambda: letters.exists() and letters.read_text().strip(), 30, message="the dead letter at B")
    [letter] = [json.loads(line) for line in letters.read_text().splitlines()]
    attributes = letter["attributes"]
    assert attributes["id"] == "d1" and attributes["fmesherrordest"] == "function:fails"
    assert "always fails" in attributes["fmesherrordata"] and attributes["fmeshpath"] == "near-a"
