"""The spans of an event's hops, through OpenTelemetry's SDK and its in-memory exporter:
ingress → delivery attempts (one failed, then one that succeeds) → reply → a sink.

The parts are the real ones, in one process: the ingress, the broker on the memory log,
a function's sidecar, the reply routed to an HTTP sink's sidecar. The sink's far side is
an `httpx.MockTransport` that keeps what it was sent."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from fmesh.broker.broker import Broker
from fmesh.broker.filters import compile_shorthand
from fmesh.broker.ingress import Ingress
from fmesh.broker.memory_log import MemoryEventLog
from fmesh.deploy.otel import OtelTracer, ReportingExporter, traces_url
from fmesh.runtime.policy import DeliveryPolicy
from fmesh.runtime.replica import ReplyData
from fmesh.runtime.sidecar import Sidecar
from fmesh.runtime.sinks.base import SinkOptions
from fmesh.runtime.sinks.bridge import BridgeAuth, BridgeSink
from fmesh.runtime.sinks.http import HttpSink
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from fmesh.errors import HandlerError
from fmesh.events import new_event
from fmesh.tracecontext import parse_traceparent
from fmesh.tracing import CLIENT, NOOP

GIVEN = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class FailsOnce:
    """A function that fails its first attempt at each event, then replies with data."""

    def __init__(self) -> None:
        self.attempts = 0

    async def invoke(self, event, timeout):
        self.attempts += 1
        if self.attempts == 1:
            raise HandlerError("not yet", status=503)
        return ReplyData(b'{"ok":true}', "application/json")


class Pipeline:
    """ingress → function:f (fails once) → its reply → subscription:audit, an HTTP sink."""

    def __init__(self, tracer) -> None:
        self.sent: list[httpx.Request] = []
        broker = Broker(MemoryEventLog())
        self.ingress = Ingress(broker.publish)
        self.ingress.tracer = tracer
        policy = DeliveryPolicy(retries=2, delay=0.01)
        function = broker.subscribe("function:f", compile_shorthand({"type": "order.created"}))
        audit = broker.subscribe("subscription:audit", compile_shorthand({"type": {"suffix": ".reply"}}))
        sink = HttpSink("http://audit.example/", SinkOptions(), httpx.MockTransport(self._answer))
        self.sidecars = [
            Sidecar("function:f", "/fmesh/functions/f", function, FailsOnce(), broker, policy, 4, tracer=tracer),
            Sidecar("subscription:audit", "/fmesh/audit", audit, sink, broker, policy, 4, tracer=tracer,
                    span_kind=CLIENT)]

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return httpx.Response(200)

    async def run(self, headers: dict[str, str]) -> httpx.Response:
        for sidecar in self.sidecars:
            sidecar.start()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.ingress), base_url="http://mesh") as c:
                answer = await c.post("/", headers={"ce-specversion": "1.0", "ce-id": "e1", "ce-source": "/shop",
                                                    "ce-type": "order.created", **headers}, content=b"{}")
            deadline = time.monotonic() + 10
            while not self.sent or self.sidecars[1].stats.delivered < 1:
                assert time.monotonic() < deadline, "the reply never reached the sink"
                await asyncio.sleep(0.01)
        finally:
            for sidecar in self.sidecars:
                await sidecar.stop()
        return answer


@pytest.fixture
def exported():
    exporter = InMemorySpanExporter()
    return exporter, OtelTracer(SimpleSpanProcessor(exporter), {"fmesh.mesh_id": "m1", "fmesh.node_id": "n1"})


def by_name(spans):
    found: dict[str, list] = {}
    for span in sorted(spans, key=lambda s: s.start_time):
        found.setdefault(span.name, []).append(span)
    return found


async def test_one_trace_from_the_ingress_through_a_retry_and_a_reply_to_a_sink(exported):
    exporter, tracer = exported
    pipeline = Pipeline(tracer)
    assert (await pipeline.run({})).status_code == 202
    spans = exporter.get_finished_spans()
    names = by_name(spans)
    assert len({span.context.trace_id for span in spans}) == 1, "one trace"
    [ingress], attempts = names["publish order.created"], names["deliver function:f"]
    [reply], [sent] = names["reply function:f"], names["deliver subscription:audit"]

    assert ingress.kind is SpanKind.PRODUCER and ingress.parent is None  # the event came without a context
    assert ingress.resource.attributes["service.name"] == "fmesh"
    assert ingress.resource.attributes["fmesh.mesh_id"] == "m1"
    assert [a.attributes["fmesh.attempt"] for a in attempts] == [1, 2]
    assert [a.status.status_code for a in attempts] == [StatusCode.ERROR, StatusCode.UNSET]
    assert "not yet" in attempts[0].status.description and attempts[0].attributes["fmesh.status"] == 503
    for attempt in attempts:
        assert attempt.kind is SpanKind.CONSUMER and attempt.parent.span_id == ingress.context.span_id
        assert attempt.attributes["cloudevents.event_id"] == "e1"
        assert attempt.attributes["cloudevents.event_source"] == "/shop"
        assert attempt.attributes["cloudevents.event_type"] == "order.created"
        assert attempt.attributes["cloudevents.event_spec_version"] == "1.0"
        assert attempt.attributes["fmesh.subscription"] == "function:f"
    assert reply.kind is SpanKind.PRODUCER and reply.parent.span_id == attempts[1].context.span_id
    assert sent.kind is SpanKind.CLIENT and sent.parent.span_id == reply.context.span_id
    assert sent.attributes["cloudevents.event_type"] == "order.created.reply"

    [request] = pipeline.sent  # the reply carries its context; the request, the hop's
    assert parse_traceparent(request.headers["ce-traceparent"]).span_id == format(reply.context.span_id, "016x")
    assert parse_traceparent(request.headers["traceparent"]).span_id == format(sent.context.span_id, "016x")


async def test_an_event_with_a_context_keeps_its_trace_and_the_request_header_is_ignored_then(exported):
    exporter, tracer = exported
    other = "00-11111111111111111111111111111111-2222222222222222-01"
    await Pipeline(tracer).run({"ce-traceparent": GIVEN, "ce-tracestate": "vendor=x", "traceparent": other})
    spans = exporter.get_finished_spans()
    assert {format(span.context.trace_id, "032x") for span in spans} == {"4bf92f3577b34da6a3ce929d0e0e4736"}
    names = by_name(spans)
    [ingress] = names["publish order.created"]
    assert format(ingress.parent.span_id, "016x") == "00f067aa0ba902b7"
    for attempt in names["deliver function:f"]:  # children of the producer's context, as the event says
        assert format(attempt.parent.span_id, "016x") == "00f067aa0ba902b7"
        assert attempt.context.trace_state.get("vendor") == "x"


async def test_a_request_header_is_the_parent_of_an_event_without_a_context(exported):
    exporter, tracer = exported
    await Pipeline(tracer).run({"traceparent": GIVEN})
    [ingress] = by_name(exporter.get_finished_spans())["publish order.created"]
    assert format(ingress.context.trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert format(ingress.parent.span_id, "016x") == "00f067aa0ba902b7"


async def test_without_export_the_context_is_still_made_and_carried():
    pipeline = Pipeline(NOOP)
    await pipeline.run({})
    [request] = pipeline.sent
    reply, hop = parse_traceparent(request.headers["ce-traceparent"]), parse_traceparent(request.headers["traceparent"])
    assert reply.trace_id == hop.trace_id and reply.span_id != hop.span_id


async def test_a_malformed_context_is_refused_naming_it():
    pipeline = Pipeline(NOOP)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=pipeline.ingress), base_url="http://mesh") as c:
        answer = await c.post("/", headers={"ce-specversion": "1.0", "ce-id": "e1", "ce-source": "/shop",
                                            "ce-type": "order.created", "ce-traceparent": "00-abc-01"})
        assert answer.status_code == 400 and answer.json()["attribute"] == "traceparent"
        assert "expected 00-<32 lowercase hex trace id" in answer.json()["error"]
        structured = await c.post("/", headers={"content-type": "application/cloudevents-batch+json"},
                                  content=b'[{"specversion":"1.0","id":"1","source":"/s","type":"t",'
                                          b'"tracestate":"Bad Key=1"}]')
        assert structured.status_code == 400 and structured.json()["attribute"] == "tracestate"
        transport = await c.post("/", headers={"ce-specversion": "1.0", "ce-id": "e2", "ce-source": "/shop",
                                           "ce-type": "order.created", "traceparent": "garbage"})
        assert transport.status_code == 202, "a malformed request header is not the event's: it is ignored"


def test_an_export_that_fails_is_said_once_and_again_when_it_works(caplog):
    class Flaky(InMemorySpanExporter):
        results = [SpanExportResult.FAILURE] * 3 + [SpanExportResult.SUCCESS] * 2

        def export(self, spans):
            return self.results.pop(0)

    caplog.set_level("INFO", logger="fmesh")
    exporter = ReportingExporter(Flaky(), "http://127.0.0.1:9/v1/traces")
    for _ in range(5):
        exporter.export([])
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("fmesh")]
    assert len(lines) == 2 and "cannot export spans" in lines[0] and "again" in lines[1]


def test_the_endpoint_is_a_collector_base_url_or_its_traces_url():
    assert traces_url("http://127.0.0.1:4318") == "http://127.0.0.1:4318/v1/traces"
    assert traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"
    with pytest.raises(ValueError, match="http"):
        traces_url("127.0.0.1:4318")


def test_a_mesh_without_an_endpoint_never_loads_the_sdk():
    """(FastAPI imports OpenTelemetry's API for itself when it is installed; the SDK and the
    exporter are fmesh's, and come only with --otlp-endpoint.)"""
    import subprocess
    import sys

    code = ("import sys, fmesh.deploy.server, fmesh.deploy.node, fmesh.runtime.runtime, fmesh.broker.ingress; "
            "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


async def test_a_bridge_carries_the_context_and_its_request_is_the_client_spans(exported):
    exporter, tracer = exported
    sent: list[httpx.Request] = []

    def other_mesh(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"mesh": "mesh-b"})
        sent.append(request)
        return httpx.Response(202)

    broker = Broker(MemoryEventLog())
    queue = broker.subscribe("bridge:b", compile_shorthand({"type": "t"}))
    bridge = BridgeSink(HttpSink("http://mesh-b/", SinkOptions(), httpx.MockTransport(other_mesh)), "mesh-a",
                        BridgeAuth(peer="a"))
    sidecar = Sidecar("bridge:b", "/fmesh/b", queue, bridge, broker, DeliveryPolicy(), 4, tracer=tracer,
                      span_kind=CLIENT)
    sidecar.start()
    try:
        await broker.publish([new_event("t", "/s", traceparent=GIVEN)])
        deadline = time.monotonic() + 10
        while sidecar.stats.delivered < 1:
            assert time.monotonic() < deadline, f"not bridged: {sidecar.stats}"
            await asyncio.sleep(0.01)
    finally:
        await sidecar.stop()
    [request] = sent
    [span] = by_name(exporter.get_finished_spans())["deliver bridge:b"]
    assert span.kind is SpanKind.CLIENT and format(span.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert request.headers["ce-traceparent"] == GIVEN  # the event's own, for the other mesh to keep
    assert parse_traceparent(request.headers["traceparent"]).span_id == format(span.context.span_id, "016x")
