"""Bridges across an untrusted network, each mesh a real `fmesh up`: the receiving mesh
knows the sender as a peer by a token, an HMAC signature or a client certificate (mTLS
over a test CA), stamps it as `fmeshsender`, and holds it to its rate limit."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import httpx
from support import FIXTURES, json_lines, wait_for
from tls import make_tls

RECORD = FIXTURES / "functions" / "record" / "handler.py"


def receiver_manifest(folder: Path, out: Path, peer_auth: str, rate: str = "") -> Path:
    path = folder / "b.yaml"
    path.write_text(f"""functions:
  record:
    handler: {RECORD}:handle
    on: [{{type: {{prefix: com.shop.}}}}]
    env: {{RECORD_TO: "{out}"}}
    scale: {{max: 2, concurrency: 16}}
    allow: [peer:cloud-a]
peers:
  cloud-a:
    auth: {peer_auth}
    allow: {{type: {{prefix: com.shop.}}}}
{rate}""")
    return path


def sender_manifest(folder: Path, to: str, auth: str | None, tls: str = "") -> Path:
    path = folder / "a.yaml"
    path.write_text(f"""bridges:
  to-b:
    to: {to}
    filter: {{type: {{prefix: com.shop.}}}}
""" + (f"    auth: {auth}\n" if auth else "") + tls)
    return path


def records(out: Path) -> list[dict]:
    return [line["attributes"] for line in json_lines(out)]


def send(mesh, count: int) -> list[str]:
    ids = [f"e{i}" for i in range(count)]
    batch = [{"specversion": "1.0", "id": i, "source": "/shop", "type": "com.shop.order"} for i in ids]
    answer = httpx.post(mesh.url + "/", content=json.dumps(batch),
                        headers={"content-type": "application/cloudevents-batch+json"})
    assert answer.status_code == 202, answer.text
    return ids


def bridge(mesh) -> dict:
    return mesh.api("GET", "/v1/status").json()["bridges"][0]


def bridged(mesh_factory, tmp_path, receiver_auth: str, sender_auth: str, secrets: dict[str, str],
            count: int = 50, rate: str = "") -> tuple:
    out = tmp_path / "b.jsonl"
    b = mesh_factory(extra=["--mesh-id", "cloud-b", "--ingress-auth", "required"], environ=secrets)
    b.start("-f", str(receiver_manifest(tmp_path, out, receiver_auth, rate)))
    a = mesh_factory(extra=["--mesh-id", "cloud-a"], environ=secrets)
    a.start("-f", str(sender_manifest(tmp_path, b.url, sender_auth)))
    return a, b, out, send(a, count)


def test_a_bridge_authenticates_with_a_token_and_arrives_as_the_peer(mesh_factory, tmp_path):
    a, b, out, ids = bridged(mesh_factory, tmp_path, "{token_env: A_TOKEN}", "{token_env: A_TOKEN}",
                             {"A_TOKEN": "s3cret-a-to-b"})
    wait_for(lambda: sorted(r["id"] for r in records(out)) == sorted(ids), 30, message="all events at B")
    assert {r["fmeshsender"] for r in records(out)} == {"peer:cloud-a"}
    assert {r["fmeshpath"] for r in records(out)} == {"cloud-a"}


def test_a_bridge_with_the_wrong_token_gets_nothing_in(mesh_factory, tmp_path):
    out = tmp_path / "b.jsonl"
    b = mesh_factory(extra=["--mesh-id", "cloud-b", "--ingress-auth", "required"], environ={"A_TOKEN": "right"})
    b.start("-f", str(receiver_manifest(tmp_path, out, "{token_env: A_TOKEN}")))
    a = mesh_factory(extra=["--mesh-id", "cloud-a"], environ={"A_TOKEN": "wrong"})
    a.start("-f", str(sender_manifest(tmp_path, b.url, "{token_env: A_TOKEN}")))
    send(a, 3)
    wait_for(lambda: bridge(a)["dead_lettered"] == 3, 30, message="the refused events dead-lettered at A")
    assert "401" in bridge(a)["last_error"] and bridge(a)["state"] == "refused" and not records(out)


def test_a_bridge_signs_with_hmac_and_arrives_as_the_peer(mesh_factory, tmp_path):
    a, b, out, ids = bridged(mesh_factory, tmp_path, "{hmac_secret_env: SHARED}",
                             "{hmac_secret_env: SHARED, peer: cloud-a}", {"SHARED": "a-long-shared-secret"})
    wait_for(lambda: sorted(r["id"] for r in records(out)) == sorted(ids), 30, message="all events at B")
    assert {r["fmeshsender"] for r in records(out)} == {"peer:cloud-a"}


def test_a_rate_limited_peer_gets_429_and_its_bridge_delivers_everything(mesh_factory, tmp_path):
    a, b, out, ids = bridged(mesh_factory, tmp_path, "{token_env: A_TOKEN}", "{token_env: A_TOKEN}",
                             {"A_TOKEN": "s3cret"}, count=300, rate="    rate: {rate: 100/s, burst: 50}\n")
    wait_for(lambda: len(records(out)) >= len(ids), 60, message="every event through the rate limit")
    assert sorted(r["id"] for r in records(out)) == sorted(ids)  # each once
    status = bridge(a)
    assert status["failed"] > 0 and status["dead_lettered"] == 0, status  # it was held back, and waited


def test_a_bridge_over_mtls_is_known_by_its_certificate(mesh_factory, tmp_path):
    files = make_tls(tmp_path / "tls", client_cn="mesh-a.test")
    out = tmp_path / "b.jsonl"
    verify = ssl.create_default_context(cafile=str(files.ca_file))
    verify.load_cert_chain(str(files.client.cert), str(files.client.key))
    b = mesh_factory(extra=["--mesh-id", "cloud-b", "--ingress-auth", "required", "--tls-cert", str(files.server.cert),
                            "--tls-key", str(files.server.key), "--tls-client-ca", str(files.ca_file)],
                     scheme="https", client={"verify": verify})
    b.start("-f", str(receiver_manifest(tmp_path, out, "{subject: mesh-a.test}")))
    a = mesh_factory(extra=["--mesh-id", "cloud-a"])
    tls = f"    tls: {{ca: {files.ca_file}, cert: {files.client.cert}, key: {files.client.key}}}\n"
    a.start("-f", str(sender_manifest(tmp_path, b.url, None, tls)))  # the certificate is the credential
    ids = send(a, 20)
    wait_for(lambda: sorted(r["id"] for r in records(out)) == sorted(ids), 30, message="all events at B over mTLS")
    assert {r["fmeshsender"] for r in records(out)} == {"peer:cloud-a"}
    assert bridge(a)["url"].startswith("https://")


def test_a_peer_answering_2xx_with_a_body_that_looks_like_a_broken_event_still_took_it(mesh_factory, tmp_path,
                                                                                       receiver):
    receiver.script("/", (200, {"ce-id": "", "ce-type": "junk"}, b"garbage"))  # not a mesh, but says 200
    a = mesh_factory(extra=["--mesh-id", "cloud-a"])
    a.start("-f", str(sender_manifest(tmp_path, receiver.url, None)))
    send(a, 5)
    wait_for(lambda: bridge(a)["forwarded"] == 5, 30, message="five events forwarded")
    assert bridge(a)["dead_lettered"] == 0 and bridge(a)["state"] == "connected"


def test_peers_that_share_a_credential_are_refused_and_nothing_is_deployed(mesh_factory, tmp_path):
    mesh = mesh_factory(environ={"SAME": "x"}).start()  # the mesh reads secrets from its own environment
    path = tmp_path / "peers.yaml"
    path.write_text("peers:\n  p1: {auth: {token_env: SAME}}\n  p2: {auth: {token_env: SAME}}\n")
    refused = mesh.cli("deploy", "-f", str(path), check=False)
    assert refused.returncode == 1 and "same credential" in refused.stderr, refused.stderr
    assert mesh.api("GET", "/v1/peers").json()["peers"] == []


def test_deploying_peers_to_a_mesh_that_does_not_tell_callers_apart_warns(mesh_factory, tmp_path):
    mesh = mesh_factory(environ={"EU": "x"}).start()
    path = tmp_path / "peers.yaml"
    path.write_text("peers:\n  eu: {auth: {token_env: EU}}\n")
    deployed = mesh.cli("deploy", "-f", str(path))
    assert "warning: ingress auth is off on this mesh" in deployed.stderr, deployed.stderr


def test_a_bridge_whose_secret_is_gone_after_a_restart_keeps_its_events_waiting(mesh_factory, tmp_path):
    out = tmp_path / "b.jsonl"
    b = mesh_factory(extra=["--mesh-id", "cloud-b", "--ingress-auth", "required"], environ={"A_TOKEN": "t"})
    b.start("-f", str(receiver_manifest(tmp_path, out, "{token_env: A_TOKEN}")))
    a = mesh_factory(extra=["--mesh-id", "cloud-a"], environ={"A_TOKEN": "t"})
    a.start("-f", str(sender_manifest(tmp_path, b.url, "{token_env: A_TOKEN}")))
    a.stop()
    a.environ = {}  # restarted without the bridge's secret
    a.start()
    report = a.api("GET", "/v1/status").json()
    assert "A_TOKEN" in report["broken"]["bridge/to-b"]
    ids = send(a, 4)
    wait_for(lambda: a.api("GET", "/v1/status").json()["broken"] and pending(a) == 4, 20,
             message="the events kept for the broken bridge")
    a.stop()
    a.environ = {"A_TOKEN": "t"}
    a.start()
    wait_for(lambda: sorted(r["id"] for r in records(out)) == sorted(ids), 30, message="the kept events at B")


def pending(mesh) -> int:
    import sqlite3

    db = sqlite3.connect(mesh.data_dir / "mesh.db", timeout=5)
    try:
        return db.execute("SELECT count(*) FROM deliveries WHERE subscription='bridge:to-b'").fetchone()[0]
    finally:
        db.close()
