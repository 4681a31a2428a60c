"""Trace context through a real mesh: made at the ingress, seen by a Python handler, carried
across its reply to an HTTP sink; and spans exported over OTLP/HTTP with --otlp-endpoint."""

from __future__ import annotations

import json

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from support import Receiver, wait_for, write_manifest

from fmesh.tracecontext import parse_traceparent

GIVEN = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
MANIFEST = """
functions:
  traced:
    handler: {{fixtures}}/traced/handler.py:handle
    on: [{{{{type: order}}}}]
subscriptions:
  audit:
    filter: {{{{type: order.reply}}}}
    to: {receiver}/audit
    delivery: {{{{retries: 2, delay: 20ms}}}}
"""


def deploy(mesh, tmp_path, receiver) -> None:
    mesh.cli("deploy", "-f", str(write_manifest(tmp_path, MANIFEST.format(receiver=receiver.url))))


def post(mesh, event_id: str, **headers: str) -> httpx.Response:
    return httpx.post(mesh.url + "/", headers={"ce-specversion": "1.0", "ce-id": event_id, "ce-source": "/t",
                                               "ce-type": "order", **headers}, content=b"{}", timeout=10)


def reply_to(receiver, count: int) -> dict:
    wait_for(lambda: len(receiver.to("/audit")) >= count, 20, message=f"reply {count} at the sink")
    return receiver.to("/audit")[count - 1]


def test_the_context_is_made_at_the_ingress_and_carried_across_a_reply_to_a_sink(mesh, tmp_path, receiver):
    deploy(mesh, tmp_path, receiver)
    assert post(mesh, "e1").status_code == 202
    request = reply_to(receiver, 1)
    seen = json.loads(request["body"])["traceparent"]  # what the handler saw as event["traceparent"]
    trace_id = parse_traceparent(seen).trace_id
    reply = parse_traceparent(request["headers"]["ce-traceparent"])
    hop = parse_traceparent(request["headers"]["traceparent"])
    assert reply.trace_id == hop.trace_id == trace_id
    assert len({parse_traceparent(seen).span_id, reply.span_id, hop.span_id}) == 3  # each hop its own parent id

    assert post(mesh, "e2", **{"ce-traceparent": GIVEN, "ce-tracestate": "shop=1"}).status_code == 202
    request = reply_to(receiver, 2)
    assert json.loads(request["body"]) == {"traceparent": GIVEN, "tracestate": "shop=1"}
    assert parse_traceparent(request["headers"]["ce-traceparent"]).trace_id == parse_traceparent(GIVEN).trace_id
    assert request["headers"]["ce-tracestate"] == "shop=1"

    refused = post(mesh, "e3", **{"ce-traceparent": "00-4bf92f3577b34da6-01"})
    assert refused.status_code == 400 and refused.json()["attribute"] == "traceparent"
    assert "expected 00-<32 lowercase hex trace id" in refused.json()["error"]


def spans_in(receiver) -> list:
    found = []
    for request in receiver.to("/v1/traces"):
        export = ExportTraceServiceRequest()
        export.ParseFromString(request["body"])
        for resource in export.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource.resource.attributes}
            found += [(attributes, span) for scope in resource.scope_spans for span in scope.spans]
    return found


def test_spans_go_to_the_otlp_endpoint_and_a_collector_that_goes_down_stops_nothing(mesh_factory, tmp_path,
                                                                                      receiver):
    collector = Receiver()
    collector.script("/v1/traces", (200, {"content-type": "application/x-protobuf"}, b""))
    mesh = mesh_factory(extra=["--otlp-endpoint", collector.url],
                        environ={"OTEL_BSP_SCHEDULE_DELAY": "100"}).start()  # batches every 0.1 s
    deploy(mesh, tmp_path, receiver)
    assert post(mesh, "e1", **{"ce-traceparent": GIVEN}).status_code == 202
    trace_id = bytes.fromhex(parse_traceparent(GIVEN).trace_id)
    names = {"publish order", "deliver function:traced", "reply function:traced", "deliver subscription:audit"}
    wait_for(lambda: names <= {s.name for _, s in spans_in(collector) if s.trace_id == trace_id}, 20,
             message="the spans of every hop at the collector")
    resource, attempt = next((r, s) for r, s in spans_in(collector) if s.name == "deliver function:traced")
    assert resource["service.name"] == "fmesh" and resource["fmesh.mesh_id"]
    attributes = {a.key: a.value for a in attempt.attributes}
    assert attributes["cloudevents.event_id"].string_value == "e1"
    assert attributes["fmesh.attempt"].int_value == 1

    collector.close()  # down: events still go through, and the log says so once
    for index in range(3):
        assert post(mesh, f"e{index + 2}").status_code == 202
    reply_to(receiver, 4)
    wait_for(lambda: "cannot export spans" in mesh.log(), 20, message="the line saying spans are dropped")
    assert mesh.log().count("cannot export spans") == 1
