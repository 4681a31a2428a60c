"""A subscription that routes with a CESQL filter, end to end, with evaluation errors reported."""

from __future__ import annotations

import json

import httpx
from support import wait_for, write_manifest


def test_cesql_filter_routes_and_reports_evaluation_errors(mesh, tmp_path):
    out = tmp_path / "seen.jsonl"
    manifest = write_manifest(tmp_path, f"""
functions:
  big-orders:
    handler: {{fixtures}}/record/handler.py:handle
    env: {{{{RECORD_TO: "{out}"}}}}
    filters:
      - cesql: "type LIKE 'com.shop.%' AND INT(amount) > 100 AND EXISTS region"
""")
    mesh.cli("deploy", "-f", str(manifest))
    events = [
        ("big", "com.shop.order", {"amount": "250", "region": "eu"}),       # matches
        ("small", "com.shop.order", {"amount": "50", "region": "eu"}),      # amount too small
        ("noregion", "com.shop.order", {"amount": "500"}),                  # no region
        ("other", "com.bank.transfer", {"amount": "900", "region": "eu"}),  # wrong type
        ("notanumber", "com.shop.order", {"amount": "lots", "region": "eu"}),  # cast error
    ]
    for event_id, event_type, extensions in events:
        headers = {"ce-id": event_id, "ce-source": "/t", "ce-type": event_type, "ce-specversion": "1.0",
                   **{f"ce-{k}": v for k, v in extensions.items()}}
        assert httpx.post(mesh.url, headers=headers).status_code == 202
    wait_for(lambda: out.exists(), 10, message="the matching event")
    wait_for(lambda: mesh.status("big-orders")["filter_errors"] == 1, 10, message="the cast error reported")
    seen = [json.loads(line)["attributes"]["id"] for line in out.read_text().splitlines()]
    assert seen == ["big"]
    status = mesh.status("big-orders")
    assert "lots" in status["last_filter_error"] and status["delivered"] == 1
