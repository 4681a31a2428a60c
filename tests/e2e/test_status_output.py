"""`fmesh status` as people read it (columns within 80, names whole), with --wide and --json."""

from __future__ import annotations

import json

import httpx
from support import wait_for, write_manifest

LONG = "a-function-whose-name-is-long-enough-to-crowd-columns"


def test_status_fits_80_columns_without_cutting_names_and_wide_and_json_show_everything(mesh, tmp_path, receiver):
    manifest = write_manifest(tmp_path, f"""
functions:
  {LONG}:
    handler: {{fixtures}}/pid/handler.py:handle
    on: [{{{{type: com.test.long}}}}]
  big-orders:
    handler: {{fixtures}}/pid/handler.py:handle
    filters:
      - cesql: "INT(amount) > 100"
subscriptions:
  audit:
    filter: {{{{type: com.test.long}}}}
    to: {receiver.url}/a-sink-path-that-is-long-enough-to-matter
""")
    mesh.cli("deploy", "-f", str(manifest))
    headers = {"ce-id": "e1", "ce-source": "/t", "ce-type": "com.test.order", "ce-specversion": "1.0",
               "ce-amount": "lots"}
    assert httpx.post(mesh.url, headers=headers).status_code == 202
    wait_for(lambda: mesh.status("big-orders").get("filter_errors") == 1, 15, message="the filter error counted")

    shown = mesh.cli("status", COLUMNS="80")
    lines = shown.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines if not line.startswith("store ")), shown.stdout  # a path is whole
    assert any(line.split()[:1] == [LONG] for line in lines), shown.stdout  # whole, not cut
    assert lines[0].split()[:2] == ["FUNCTION", "REPLICAS"], shown.stdout
    filters = lines.index("filter errors (events a filter could not be evaluated on, counted as no match):")
    assert lines[filters + 1].startswith("  big-orders: 1 event; the last: ") and "lots" in lines[filters + 1]
    assert "Traceback" not in shown.stderr and "│" not in shown.stdout  # plain columns, no box drawing

    wide = mesh.cli("status", "--wide").stdout
    header = wide.splitlines()[0].split("  ")
    assert {"VERSION", "LAST ERROR", "FILTER ERRORS", "RETRIED", "LATENCY P50/P99"} <= {h.strip() for h in header}
    assert f"{receiver.url}/a-sink-path-that-is-long-enough-to-matter" in wide

    report = json.loads(mesh.cli("status", "--json").stdout)
    assert set(report) == set(mesh.api("GET", "/v1/status").json())
    assert {f["name"] for f in report["functions"]} == {LONG, "big-orders"}
    assert report["sinks"][0]["filter_errors"] == 0
