"""`fmesh up --ingress-workers N`: other processes serve the port, parse events and hand
them to the mesh; everything else is proxied. Through real meshes: what a user sees must
be what the mesh's own port gives (answers, auth, streams, uploads), a worker that dies is
replaced without losing what was accepted, and a stop takes every process with it."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import uuid

import httpx
import pytest
from support import FMESH, wait_for, write_manifest
from tls import make_tls

SEEN = """
subscriptions:
  seen:
    filter: {{{{}}}}
    to: {url}/seen
    delivery: {{{{retries: 3, delay: 20ms}}}}
"""


def event_headers(event_type: str = "com.example.worked", **extra: str) -> dict[str, str]:
    return {"ce-specversion": "1.0", "ce-id": str(uuid.uuid4()), "ce-source": "/test", "ce-type": event_type,
            "content-type": "application/json", **extra}


def post(mesh, headers: dict[str, str], body: bytes = b"{}") -> httpx.Response:
    return httpx.post(mesh.url + "/", headers=headers, content=body, timeout=10)


def children(pid: int, name: str) -> list[int]:
    """Processes started by `pid` whose command line has `name`."""
    out = subprocess.run(["pgrep", "-P", str(pid), "-f", name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def worked(mesh_factory, tmp_path, receiver):
    mesh = mesh_factory(extra=["--ingress-workers", "2", "--ingress-auth", "optional"]).start()
    folder = tmp_path / "seen"
    folder.mkdir()
    mesh.cli("deploy", "-f", str(write_manifest(folder, SEEN.format(url=receiver.url))))
    return mesh


def test_events_through_workers_are_stored_delivered_and_answered_as_by_the_mesh(worked, receiver):
    assert "2 ingress workers serve the port" in worked.log()
    assert len(children(worked.process.pid, "fmesh.deploy.ingress_worker")) == 2
    ids = []
    for n in range(20):
        headers = event_headers()
        answer = post(worked, headers, json.dumps({"n": n}).encode())
        assert answer.status_code == 202, answer.text
        assert answer.json() == {"id": headers["ce-id"]}
        ids.append(headers["ce-id"])
    batch = [{"specversion": "1.0", "id": f"b-{n}", "source": "/test", "type": "com.example.worked", "data": n}
             for n in range(3)]
    answer = httpx.post(worked.url + "/", content=json.dumps(batch), timeout=10,
                        headers={"content-type": "application/cloudevents-batch+json"})
    assert answer.status_code == 202 and answer.json()["accepted"] == 3
    wait_for(lambda: {r["headers"]["ce-id"] for r in receiver.to("/seen")} >= {*ids, "b-0", "b-1", "b-2"},
             20, message="every event delivered")
    assert {json.loads(r["body"])["n"] for r in receiver.to("/seen") if r["headers"]["ce-id"] in ids} == set(range(20))


def test_refusals_through_workers_name_what_was_wrong(worked):
    missing = event_headers()
    del missing["ce-id"]
    answer = post(worked, missing)
    assert answer.status_code == 400 and answer.json()["attribute"] == "id"
    answer = httpx.post(worked.url + "/", content=b"x", headers={"content-type": "text/plain"}, timeout=10)
    assert answer.status_code == 415
    answer = post(worked, event_headers(), b"x" * (2 * 1024 * 1024))
    assert answer.status_code == 413 and answer.json()["limit"] == 1024 * 1024
    assert httpx.get(worked.url + "/", timeout=10).status_code == 405
    # who is calling is the mesh's to say, before what is wrong with the events
    answer = post(worked, {**missing, "authorization": "Bearer nobody-has-this"})
    assert answer.status_code == 401 and "wrong bearer token" in answer.json()["error"]
    assert answer.headers["www-authenticate"].startswith("Bearer")


def test_a_token_revoked_is_refused_at_once_through_the_workers(worked):
    created = worked.cli("tokens", "create", "shop", "--scope", "publish").stdout
    token = next(word for word in created.split() if len(word) > 30)
    assert post(worked, event_headers(authorization=f"Bearer {token}")).status_code == 202
    worked.cli("tokens", "revoke", "shop")
    assert post(worked, event_headers(authorization=f"Bearer {token}")).status_code == 401


def test_the_control_api_streams_and_uploads_go_through_the_proxy(worked, tmp_path):
    folder = tmp_path / "hello"
    folder.mkdir()
    manifest = write_manifest(folder, """
functions:
  hello:
    handler: {functions}/hello/handler.py:handle
    on: [{{type: com.example.hello}}]
""")
    worked.cli("deploy", "-f", str(manifest))  # a bundle upload, through a worker
    assert worked.status("hello")["name"] == "hello"
    follow = subprocess.Popen([*FMESH, "logs", "hello", "-f"], env=worked.env(), stdout=subprocess.PIPE, text=True)
    try:
        assert post(worked, event_headers("com.example.hello"), b'{"name": "w"}').status_code == 202
        line = ""
        while "Hello" not in line and "ready" not in line:
            line = follow.stdout.readline()
            assert line, "the log stream ended"
    finally:
        follow.terminate()
        follow.wait(10)
    assert httpx.get(worked.url + "/v1/status", timeout=10).status_code == 401  # the mesh still checks


def test_the_proxy_keeps_no_cookies_one_users_session_is_not_the_next_ones(worked):
    with httpx.Client(base_url=worked.url, timeout=10) as ann:
        assert ann.post("/ui/login", json={"token": worked.token}).status_code == 200
        assert ann.get("/ui/session").status_code == 200
    with httpx.Client(base_url=worked.url, timeout=10) as bob:  # another browser: no session of its own
        assert bob.get("/ui/session").status_code == 401


def test_a_worker_that_dies_is_replaced_and_nothing_accepted_is_lost(worked, receiver):
    accepted = []
    for _ in range(10):
        headers = event_headers()
        assert post(worked, headers).status_code == 202
        accepted.append(headers["ce-id"])
    first = children(worked.process.pid, "fmesh.deploy.ingress_worker")
    os.kill(first[0], signal.SIGKILL)
    wait_for(lambda: len(set(children(worked.process.pid, "fmesh.deploy.ingress_worker")) - set(first)) == 1,
             20, message="a new worker")
    assert "exited with code -9: starting another" in worked.log()
    for _ in range(10):
        headers = event_headers()
        answer = wait_for(lambda h=headers: _accepted(worked, h), 20, message="the port answers again")
        assert answer.status_code == 202
        accepted.append(headers["ce-id"])
    wait_for(lambda: {r["headers"]["ce-id"] for r in receiver.to("/seen")} >= set(accepted), 20,
             message="every accepted event delivered")


def _accepted(mesh, headers):
    try:
        answer = post(mesh, headers)
    except httpx.TransportError:
        return None  # a connection the killed worker held
    return answer if answer.status_code == 202 else None


def test_a_stop_takes_the_workers_with_it(worked):
    workers = children(worked.process.pid, "fmesh.deploy.ingress_worker")
    worked.process.send_signal(signal.SIGTERM)
    assert worked.process.wait(20) == 0
    wait_for(lambda: not any(alive(p) for p in workers), 10, message="the workers gone")
    assert "stopped on SIGTERM" in worked.log()


def test_workers_go_when_the_mesh_is_killed(worked):
    workers = children(worked.process.pid, "fmesh.deploy.ingress_worker")
    worked.kill()
    wait_for(lambda: not any(alive(p) for p in workers), 10, message="the workers gone with their mesh")


def test_workers_serve_https_and_the_mesh_knows_a_peer_by_its_certificate(mesh_factory, tmp_path, receiver):
    files = make_tls(tmp_path / "tls", client_cn="mesh-asia.test")
    context = ssl.create_default_context(cafile=str(files.ca_file))
    context.load_cert_chain(str(files.client.cert), str(files.client.key))
    mesh = mesh_factory(extra=["--ingress-workers", "1", "--ingress-auth", "required", "--tls-cert",
                               str(files.server.cert), "--tls-key", str(files.server.key), "--tls-client-ca",
                               str(files.ca_file)], scheme="https", client={"verify": context}).start()
    text = PEER_ASIA + SEEN.format(url=receiver.url)
    mesh.cli("deploy", "-f", str(write_manifest(tmp_path, text)), FMESH_CA=str(files.ca_file),
             FMESH_CERT=str(files.client.cert), FMESH_KEY=str(files.client.key))
    headers = event_headers(**{"ce-fmeshsender": "admin"})
    assert httpx.post(mesh.url + "/", headers=headers, content=b"{}", verify=context, timeout=10).status_code == 202
    wait_for(lambda: receiver.to("/seen"), 15, message="the event delivered")
    assert receiver.to("/seen")[0]["headers"]["ce-fmeshsender"] == "peer:asia"  # the certificate's, not the header's
    with pytest.raises(httpx.TransportError):  # no certificate: the worker's handshake refuses it
        httpx.post(mesh.url + "/", headers=event_headers(), timeout=10,
                   verify=ssl.create_default_context(cafile=str(files.ca_file)))


PEER_ASIA = """
peers:
  asia:
    auth: {{subject: mesh-asia.test}}
"""
