"""The `Tracer` that exports spans over OTLP/HTTP (`fmesh up --otlp-endpoint URL`).

OpenTelemetry's SDK with a `BatchSpanProcessor`: a span ended on the hot path is only
put in a bounded queue, and a thread of the SDK sends batches to the collector. While
the collector is down the queue fills and spans are dropped; delivery never waits for
it. The exporter's own log lines (one per failed batch) are replaced by one line when
exporting starts failing and one when it works again.

Imported only when `--otlp-endpoint` is given: a mesh without it never loads the SDK.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from fmesh import meshlog
from fmesh.tracecontext import TraceContext
from fmesh.tracing import CLIENT, CONSUMER, PRODUCER, SERVER, Parent, Span, as_context

KINDS = {SERVER: SpanKind.SERVER, CLIENT: SpanKind.CLIENT, PRODUCER: SpanKind.PRODUCER, CONSUMER: SpanKind.CONSUMER}
TRACES_PATH = "/v1/traces"
EXPORT_TIMEOUT = 5.0        # seconds one export request may take (in the SDK's thread)
CLOSE_TIMEOUT = 3.0         # seconds a stopping node waits for the last spans to go
log = meshlog.get("fmesh.deploy")
QUIET_LOGGERS = ("opentelemetry.exporter.otlp.proto.http", "opentelemetry.exporter.otlp.common",
                 "opentelemetry.sdk._shared_internal", "opentelemetry.sdk.trace.export")


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector: `/v1/traces` added to a base URL, as
    OTEL_EXPORTER_OTLP_ENDPOINT does, unless it is there already."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected the http(s):// URL of an OTLP collector, e.g. http://127.0.0.1:4318, "
                         f"got {endpoint!r}")
    path = parts.path.rstrip("/")
    return endpoint if path.endswith(TRACES_PATH) else parts._replace(path=path + TRACES_PATH).geturl()


class ReportingExporter(SpanExporter):
    """An exporter that says once when exporting fails, and once when it works again."""

    def __init__(self, inner: SpanExporter, where: str) -> None:
        self.inner = inner
        self.where = where
        self.failing = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception as exc:  # noqa: BLE001 - an exporter's bug must not end the SDK's thread
            result = SpanExportResult.FAILURE
            self._say(f"cannot export spans to {self.where}: {exc}", failing=True)
        if result is SpanExportResult.FAILURE:
            self._say(f"cannot export spans to {self.where} (no answer, or refused); spans are dropped "
                      "until it takes them", failing=True)
        else:
            self._say(f"exporting spans to {self.where} again", failing=False)
        return result

    def _say(self, line: str, failing: bool) -> None:
        if failing != self.failing:
            self.failing = failing
            if failing:
                log.warning(line)
            else:
                log.info(line)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class OtelSpan:
    __slots__ = ("_span",)

    def __init__(self, span: Any) -> None:
        self._span = span

    @property
    def context(self) -> TraceContext:
        context = self._span.get_span_context()
        return TraceContext(format(context.trace_id, "032x"), format(context.span_id, "016x"),
                            format(context.trace_flags, "02x"))

    def end(self, error: str | None = None, attributes: Mapping[str, Any] | None = None) -> None:
        if attributes:
            self._span.set_attributes(attributes)
        if error is not None:
            self._span.set_status(Status(StatusCode.ERROR, error[:1024]))
        self._span.end()


class OtelTracer:
    """`fmesh.tracing.Tracer` over the OpenTelemetry SDK (service.name `fmesh`)."""

    enabled = True

    def __init__(self, processor: SpanProcessor, resource: Mapping[str, Any]) -> None:
        """`processor`: where ended spans go (a BatchSpanProcessor over the OTLP exporter)."""
        self.provider = TracerProvider(resource=Resource.create({"service.name": "fmesh", **resource}))
        self.processor = processor
        self.provider.add_span_processor(processor)
        self._tracer = self.provider.get_tracer("fmesh")

    def start(self, name: str, kind: str, parent: Parent, tracestate: str | None = None,
              attributes: Mapping[str, Any] | None = None) -> Span:
        return OtelSpan(self._tracer.start_span(name, context=_parent(parent, tracestate), kind=KINDS[kind],
                                                attributes=attributes))

    async def close(self) -> None:
        """Send what is queued, for CLOSE_TIMEOUT at most (the collector may be down)."""
        loop = asyncio.get_running_loop()
        shutdown = loop.run_in_executor(None, lambda: self.processor.shutdown(timeout_millis=CLOSE_TIMEOUT * 1000))
        try:
            await asyncio.wait_for(asyncio.shield(shutdown), CLOSE_TIMEOUT + 1)
        except TimeoutError:
            pass  # its thread is a daemon: it goes with the process


def _parent(parent: Parent, tracestate: str | None) -> Any:
    context = as_context(parent)
    if context is None:
        return None
    try:
        state = TraceState.from_header([tracestate]) if tracestate else None
    except ValueError:
        state = None
    remote = SpanContext(int(context.trace_id, 16), int(context.span_id, 16), is_remote=True,
                         trace_flags=TraceFlags(int(context.flags, 16)), trace_state=state)
    return trace.set_span_in_context(NonRecordingSpan(remote))


def otlp_tracer(endpoint: str, mesh_id: str, node_id: str) -> OtelTracer:
    """The tracer of `fmesh up --otlp-endpoint`: OTLP/HTTP protobuf to `endpoint`."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    for name in QUIET_LOGGERS:  # ReportingExporter says what matters, once
        logging.getLogger(name).setLevel(logging.CRITICAL)
    url = traces_url(endpoint)
    exporter = ReportingExporter(OTLPSpanExporter(endpoint=url, timeout=EXPORT_TIMEOUT), url)
    resource = {"fmesh.mesh_id": mesh_id, "fmesh.node_id": node_id, "service.instance.id": node_id}
    return OtelTracer(BatchSpanProcessor(exporter), resource)
