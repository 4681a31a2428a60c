"""Who may publish and what, through real `fmesh up` processes: ingress auth modes, peers
by token, tokens with scopes from the CLI, allow rules, functions that take only some
senders, rate limits that a forwarding mesh rides out without losing an event."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from support import FIXTURES, wait_for, write_manifest

SEEN = """
subscriptions:
  seen:
    filter: {}
    to: @URL@/seen
    delivery: {retries: 3, delay: 20ms}
"""

PEER_EU = """
peers:
  eu:
    auth: {token_env: EU_TOKEN}
    allow: {type: {prefix: com.shop.}}
"""


def manifest(folder, text: str, **values: object):
    """A manifest from `text`, each @NAME@ in it replaced by `values[name]` (braces are YAML's)."""
    for name, value in values.items():
        text = text.replace(f"@{name.upper()}@", str(value))
    folder.mkdir(parents=True, exist_ok=True)
    return str(write_manifest(folder, text.replace("{", "{{").replace("}", "}}")))


def event_headers(event_type: str = "com.shop.order", **extra: str) -> dict[str, str]:
    return {"ce-specversion": "1.0", "ce-id": str(uuid.uuid4()), "ce-source": "/test", "ce-type": event_type,
            **extra}


def post(mesh, headers: dict[str, str], body: bytes = b"", **options) -> httpx.Response:
    return httpx.post(mesh.url + "/", headers=headers, content=body, timeout=10, **{**mesh.client, **options})


def senders(receiver) -> dict[str, str]:
    """{event id: fmeshsender} of what reached the receiver."""
    return {r["headers"]["ce-id"]: r["headers"].get("ce-fmeshsender") for r in receiver.to("/seen")}


@pytest.fixture
def secured(mesh_factory, tmp_path, receiver, monkeypatch):
    monkeypatch.setenv("EU_TOKEN", "eu-secret-token")
    mesh = mesh_factory(extra=["--ingress-auth", "required"]).start()
    mesh.cli("deploy", "-f", manifest(tmp_path, SEEN + PEER_EU, url=receiver.url))
    return mesh


def test_required_auth_refuses_strangers_and_stamps_who_sent_what(secured, receiver):
    mesh = secured
    assert "ingress auth required: publishing without a token" in mesh.log()
    refused = [post(mesh, event_headers()), post(mesh, event_headers(authorization="Bearer guess")),
               post(mesh, event_headers("com.bank.transfer", authorization="Bearer eu-secret-token"))]
    assert [r.status_code for r in refused] == [401, 401, 403]
    assert "com.bank.transfer" in refused[2].json()["error"] and "peer:eu" in refused[2].json()["error"]
    forged = event_headers(authorization="Bearer eu-secret-token", **{"ce-fmeshsender": "admin"})
    assert post(mesh, forged).status_code == 202
    as_admin = mesh.cli("send", "--type", "com.example", "--source", "/cli").stdout.split()[0]
    wait_for(lambda: len(senders(receiver)) >= 2, 15, message="the two accepted events")
    assert senders(receiver) == {forged["ce-id"]: "peer:eu", as_admin: "admin"}


def test_tokens_from_the_cli_with_scopes(secured, receiver, tmp_path):
    mesh = secured
    viewer = mesh.cli("tokens", "create", "viewer", "--scope", "read").stdout.strip()
    publisher = mesh.cli("tokens", "create", "ci", "--scope", "publish").stdout.strip()
    listed = json.loads(mesh.cli("tokens", "list", "--json").stdout)["tokens"]
    assert {t["name"]: t["scope"] for t in listed} == {"viewer": "read", "ci": "publish"}
    assert viewer not in json.dumps(listed) and publisher not in (mesh.data_dir / "mesh.db").read_bytes().decode(
        "latin-1")

    assert mesh.cli("status", "--json", "--token", viewer).returncode == 0  # read may list and watch
    deploy = mesh.cli("deploy", "-f", str(tmp_path / "fmesh.yaml"), "--token", viewer, check=False)
    assert deploy.returncode != 0 and "403" in deploy.stderr and "scope read" in deploy.stderr
    delete = mesh.api("DELETE", "/v1/subscriptions/seen", headers={"authorization": f"Bearer {viewer}"})
    assert delete.status_code == 403 and "admin" in delete.json()["error"]
    control = mesh.cli("status", "--token", publisher, check=False)
    assert control.returncode != 0 and "may only publish" in control.stderr

    sent = mesh.cli("send", "--type", "com.ci.build", "--source", "/ci", "--token", publisher).stdout.split()
    assert sent[1] == "202"
    wait_for(lambda: sent[0] in senders(receiver), 15, message="the event sent with the publish token")
    assert senders(receiver)[sent[0]] == "token:ci"
    mesh.cli("tokens", "revoke", "ci")
    after = mesh.cli("send", "--type", "com.ci.build", "--source", "/ci", "--token", publisher, check=False)
    assert after.returncode != 0 and " 401 " in after.stdout


def test_the_default_on_loopback_is_off_and_says_so(mesh, receiver, tmp_path):
    assert "ingress auth off, the default on 127.0.0.1" in mesh.log()
    mesh.cli("deploy", "-f", manifest(tmp_path, SEEN, url=receiver.url))
    headers = event_headers(**{"ce-fmeshsender": "peer:eu", "authorization": "Bearer whatever"})
    assert post(mesh, headers).status_code == 202
    wait_for(lambda: senders(receiver), 15, message="the event")
    assert senders(receiver) == {headers["ce-id"]: "anonymous"}


ALLOWED = """
functions:
  orders:
    handler: @FIXTURES@/append/handler.py:handle
    on: [{type: {prefix: com.shop.}}]
    env: {APPEND_TO: "@OUT@"}
    allow: [peer:eu]
"""


def test_a_function_gets_only_the_senders_it_allows(mesh_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("EU_TOKEN", "eu-secret-token")
    mesh = mesh_factory(extra=["--ingress-auth", "optional"]).start()
    out = tmp_path / "orders.txt"
    mesh.cli("deploy", "-f", manifest(tmp_path, ALLOWED + PEER_EU, out=out, fixtures=FIXTURES / "functions"))
    anonymous = event_headers()
    from_eu = event_headers(authorization="Bearer eu-secret-token")
    as_admin = event_headers(authorization=f"Bearer {mesh.token}")
    assert [post(mesh, h).status_code for h in (anonymous, as_admin, from_eu)] == [202, 202, 202]
    wait_for(lambda: out.exists() and from_eu["ce-id"] in out.read_text(), 15, message="eu's event")
    assert out.read_text().split() == [from_eu["ce-id"]]  # the others were accepted, and routed elsewhere
    assert mesh.status("orders")["pending"] == 0


def test_a_rate_limited_peer_gets_429_and_a_forwarding_mesh_loses_nothing(mesh_factory, tmp_path, receiver,
                                                                          monkeypatch):
    monkeypatch.setenv("A_TOKEN", "a-secret-token")
    inner = mesh_factory(extra=["--ingress-auth", "required"]).start()
    inner.cli("deploy", "-f", manifest(tmp_path / "b", SEEN + """
peers:
  a:
    auth: {token_env: A_TOKEN}
    rate: {rate: 5/s, burst: 5}
""", url=receiver.url))
    outer = mesh_factory().start()
    outer.cli("deploy", "-f", manifest(tmp_path / "a", """
subscriptions:
  forward:
    filter: {type: bulk}
    to: @URL@/
    options: {bearer_env: A_TOKEN}
    delivery: {retries: 100, delay: 50ms, max_delay: 2s}
""", url=inner.url))
    batch = [{"specversion": "1.0", "id": f"e{i}", "source": "/bulk", "type": "bulk"} for i in range(20)]
    accepted = post(outer, {"content-type": "application/cloudevents-batch+json"}, json.dumps(batch).encode())
    assert accepted.status_code == 202
    wait_for(lambda: len(senders(receiver)) == 20, 30, interval=0.2, message="all 20 events through the limit")
    assert set(senders(receiver)) == {f"e{i}" for i in range(20)}
    assert set(senders(receiver).values()) == {"peer:a"}
    forward = next(s for s in outer.api("GET", "/v1/status").json()["sinks"] if s["name"] == "subscription:forward")
    assert forward["retried"] > 0 and "429" in (forward["last_error"] or "")
    assert forward["dead_lettered"] == 0

    statuses = [post(inner, event_headers("bulk", authorization="Bearer a-secret-token")) for _ in range(8)]
    refused = next(r for r in statuses if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1 and "peer:a is over its rate limit" in refused.json()["error"]
