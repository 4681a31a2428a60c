"""Prometheus metrics at /metrics, read from the node's live status at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from fmesh.deploy.operations import NodeOperations
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MeshCollector:
    """Functions, sinks and triggers, as the runtime sees them now."""

    def __init__(self, node: NodeOperations) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        yield from self._functions()
        yield from self._triggers()

    def _functions(self) -> Iterator[Metric]:
        replicas = GaugeMetricFamily("fmesh_function_replicas", "Replica processes running", labels=["function"])
        desired = GaugeMetricFamily("fmesh_function_replicas_desired", "Replicas the autoscaler wants",
                                    labels=["function"])
        inflight = GaugeMetricFamily("fmesh_function_inflight", "Events being handled", labels=["function"])
        cold = GaugeMetricFamily("fmesh_function_cold_start_seconds", "Median recent cold start",
                                 labels=["function"])
        counters = {name: CounterMetricFamily(f"fmesh_function_{name}", help_text, labels=["function"])
                    for name, help_text in (("delivered", "Events handled successfully"),
                                            ("failed", "Failed attempts"), ("retried", "Attempts retried"),
                                            ("dead_lettered", "Events that exhausted their delivery policy"),
                                            ("out_of_memory", "Replicas lost to their memory limit"))}
        for status in self.node.function_status():
            labels = [status.name]
            pool, stats = status.pool, status.delivery
            replicas.add_metric(labels, pool.ready + pool.starting + pool.draining)
            desired.add_metric(labels, pool.desired)
            inflight.add_metric(labels, stats.inflight)
            if pool.cold_start_median_ms is not None:
                cold.add_metric(labels, pool.cold_start_median_ms / 1000)
            for name in ("delivered", "failed", "retried", "dead_lettered"):
                counters[name].add_metric(labels, getattr(stats, name))
            counters["out_of_memory"].add_metric(labels, status.out_of_memory)
        yield from (replicas, desired, inflight, cold, *counters.values())

    def _triggers(self) -> Iterator[Metric]:
        events = CounterMetricFamily("fmesh_trigger_events", "Events a trigger published", labels=["trigger", "kind"])
        up = GaugeMetricFamily("fmesh_trigger_connected", "1 when the trigger's source is reachable",
                               labels=["trigger", "kind"])
        lag = GaugeMetricFamily("fmesh_trigger_lag", "Kafka consumer lag", labels=["trigger", "kind"])
        for status in self.node.trigger_status():
            labels = [status.name, status.kind]
            events.add_metric(labels, status.events_in)
            up.add_metric(labels, 1 if status.state == "connected" else 0)
            if status.lag is not None:
                lag.add_metric(labels, status.lag)
        yield from (events, up, lag)


def metrics_text(node: NodeOperations) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MeshCollector(node))  # type: ignore[arg-type]
    return generate_latest(registry)
