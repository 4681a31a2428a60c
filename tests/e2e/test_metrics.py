"""/metrics as events flow through a real mesh: the counts move, agree with `fmesh status`
after a purge, and survive a redeploy and a restart."""

from __future__ import annotations

import json

import httpx
from prometheus_client.parser import text_string_to_metric_families
from support import wait_for, write_manifest

MANIFEST = """
functions:
  ok:
    handler: {functions}/sink/handler.py:handle
    on: [{{type: ok}}]
    env: {{ROUND: "%s"}}
  bad:
    handler: {fixtures}/fail/handler.py:handle
    on: [{{type: bad}}]
    delivery: {{retries: 0}}
subscriptions:
  audit:
    filter: {{type: ok}}
    to: %s/audit
"""


def scrape(mesh) -> dict[tuple[str, tuple], float]:
    """Every sample on /metrics, by (name, sorted labels)."""
    text = httpx.get(mesh.url + "/metrics", timeout=30).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def send(mesh, kind: str) -> None:
    event = {"specversion": "1.0", "id": f"{kind}-{len(kind)}", "source": "/metrics-test", "type": kind}
    response = mesh.api("POST", "/", json=event, headers={"content-type": "application/cloudevents+json"})
    assert response.status_code == 202, response.text


def status(mesh) -> dict:
    return json.loads(mesh.cli("status", "--json").stdout)


def test_metrics_follow_events_and_agree_with_status_after_a_purge_redeploy_and_restart(mesh_factory, tmp_path,
                                                                                        receiver):
    mesh = mesh_factory().start()
    manifest = write_manifest(tmp_path, MANIFEST % ("1", receiver.url))
    mesh.cli("deploy", "-f", str(manifest))
    for kind in ("ok", "bad", "nothing-wants-this"):
        send(mesh, kind)
    wait_for(lambda: mesh.status("ok").get("delivered") == 1 and mesh.status("bad").get("dead_lettered") == 1, 30,
             message="one event delivered and one dead-lettered")

    samples = scrape(mesh)
    assert sample(samples, "fmesh_function_delivered_total", function="ok") == 1
    assert sample(samples, "fmesh_function_attempt_seconds_count", function="ok") == 1
    assert sample(samples, "fmesh_function_attempt_seconds_bucket", function="ok", le="+Inf") == 1
    assert sample(samples, "fmesh_function_failed_total", function="bad") == 1
    assert sample(samples, "fmesh_function_dead_lettered_total", function="bad") == 1
    assert sample(samples, "fmesh_function_dead_letters", function="bad") == 1
    assert sample(samples, "fmesh_function_cold_start_seconds_count", function="ok") == 1
    assert sample(samples, "fmesh_function_pending", function="ok") == 0
    assert sample(samples, "fmesh_function_replicas_desired", function="ok") is not None
    assert sample(samples, "fmesh_events_unrouted_total") == 1
    assert sample(samples, "fmesh_events_in_total", sender="anonymous") == 3
    wait_for(lambda: sample(scrape(mesh), "fmesh_sink_delivered_total", sink="subscription:audit") == 1, 10,
             message="the audit subscription's delivery counted")

    mesh.cli("dead-letters", "--purge")
    report, samples = status(mesh), scrape(mesh)
    bad = next(f for f in report["functions"] if f["name"] == "bad")
    assert bad["dead_lettered"] == 0 == sample(samples, "fmesh_function_dead_letters", function="bad")
    assert sample(samples, "fmesh_function_dead_lettered_total", function="bad") == 1  # ever, a purge or not
    assert report["unrouted"] == 1 and report["events_in"] == {"anonymous": 3}
    ok = next(f for f in report["functions"] if f["name"] == "ok")
    assert ok["latency_ms"]["p50"] > 0 and ok["latency_ms"]["p99"] >= ok["latency_ms"]["p50"]

    write_manifest(tmp_path, MANIFEST % ("2", receiver.url))   # a changed env: a new version, a new sidecar
    assert "function ok updated" in mesh.cli("deploy", "-f", str(manifest)).stdout
    send(mesh, "ok")   # the same id: not deduplicated at the ingress, delivered again
    wait_for(lambda: mesh.status("ok").get("delivered") == 2, 30, message="the second delivery, counted with the first")

    mesh.stop()
    mesh.start()
    samples = scrape(mesh)
    assert sample(samples, "fmesh_function_delivered_total", function="ok") == 2
    assert sample(samples, "fmesh_function_dead_lettered_total", function="bad") == 1
    assert sample(samples, "fmesh_events_unrouted_total") == 1
    assert sample(samples, "fmesh_events_in_total", sender="anonymous") == 4
    ok = next(f for f in status(mesh)["functions"] if f["name"] == "ok")
    assert ok["delivered"] == 2 and ok["failed"] == 0
    shown = mesh.cli("status").stdout
    assert "1 event matched no subscription" in shown
