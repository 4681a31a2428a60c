"""The backlog bound through a real mesh: a subscription that cannot keep up holds at most
--max-backlog events; past it the mesh answers 503 with Retry-After naming it (the CLI says
so in one line), events for others still flow, and a restart still counts what is waiting."""

from __future__ import annotations

import httpx
from support import wait_for, write_manifest

ORDER = {"ce-specversion": "1.0", "ce-source": "/shop", "ce-type": "order"}


def post(mesh, event_id: str, event_type: str = "order") -> httpx.Response:
    return httpx.post(mesh.url + "/", headers={**ORDER, "ce-id": event_id, "ce-type": event_type}, content=b"{}",
                      timeout=10)


def test_a_subscription_at_its_bound_gets_503_until_it_catches_up(mesh_factory, tmp_path, receiver):
    receiver.script("/busy", (503,))  # never takes anything: every order waits for a retry an hour away
    mesh = mesh_factory(extra=["--max-backlog", "3"]).start()
    mesh.cli("deploy", "-f", str(write_manifest(tmp_path, f"""
subscriptions:
  hook:
    filter: {{{{type: order}}}}
    to: {receiver.url}/busy
    delivery: {{{{retries: 50, delay: 1h}}}}
  audit:
    filter: {{{{type: audit}}}}
    to: {receiver.url}/audit
""")))
    assert [post(mesh, f"o{i}").status_code for i in range(3)] == [202, 202, 202]
    refused = post(mesh, "o3")
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["subscription"] == "subscription:hook" and refused.json()["limit"] == 3
    assert post(mesh, "a1", "audit").status_code == 202  # others still flow
    wait_for(lambda: receiver.to("/audit"), 15, message="the audit event at its sink")
    sent = mesh.cli("send", "--type", "order", "--source", "/cli", "--data", "{}", check=False)
    assert sent.returncode != 0 and "Traceback" not in sent.stderr + sent.stdout
    assert "subscription:hook has 3 events waiting" in sent.stdout + sent.stderr

    mesh.stop()
    mesh.start()
    assert post(mesh, "o4").status_code == 503  # what the store holds counts after a restart
    assert len({r["headers"]["ce-id"] for r in receiver.to("/busy")} - {"o0", "o1", "o2"}) == 0
