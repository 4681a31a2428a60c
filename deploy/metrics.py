"""Prometheus metrics at /metrics: the node's tallies (counts kept across redeploys and
restarts), its live status, and the depths of its subscriptions in the store.

The depths and stored dead letters come from the store, so the route gathers them first
(`gather_depths`, bounded in time: a slow store leaves them out rather than hanging a
scrape); the rest is read from memory while the text is made.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fmesh.broker.tallies import Counts, Histogram
from fmesh.deploy.operations import NodeOperations
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEPTH_TIMEOUT = 2.0   # seconds a scrape waits for the store's answers

DELIVERY_COUNTERS = (("delivered", "Events delivered"),
                     ("failed", "Failed attempts, retried or not"),
                     ("retried", "Attempts scheduled again after a failure"),
                     ("dead_lettered", "Events ever put in the dead letters (a purge does not lower it)"),
                     ("redirected", "Events handed to a dead-letter function or subscription"),
                     ("replies", "Replies published"))


@dataclass
class Depths:
    """What the store says now: deliveries stored per subscription, dead letters stored,
    bridges' backlogs (count, when the oldest was stored)."""

    pending: dict[str, int] = field(default_factory=dict)
    backlog: dict[str, tuple[int, float | None]] = field(default_factory=dict)
    dead_letters: dict[str, int] | None = None


async def gather_depths(node: NodeOperations, timeout: float | None = None) -> Depths:
    """Ask the store, all at once and for at most `timeout` seconds; what did not answer in
    time (or failed) is left out of this scrape."""
    asks: dict[tuple[str, str], Awaitable[Any]] = {("dead", ""): node.dead_letter_counts()}
    for status in node.function_status():
        asks["pending", f"function:{status.name}"] = node.pending(f"function:{status.name}")
    for sink in node.sink_status():
        asks["backlog" if sink.bridge else "pending", sink.name] = (
            node.backlog(sink.name) if sink.bridge else node.pending(sink.name))
    tasks = {key: asyncio.ensure_future(ask) for key, ask in asks.items()}
    await asyncio.wait(tasks.values(), timeout=DEPTH_TIMEOUT if timeout is None else timeout)
    depths = Depths()
    for (kind, name), task in tasks.items():
        if not task.done():
            task.cancel()
        elif task.exception() is None:
            if kind == "dead":
                depths.dead_letters = task.result()
            else:
                getattr(depths, kind)[name] = task.result()
    return depths


class Family:
    """The metrics of one kind of subscription (function, sink, bridge), one series each."""

    def __init__(self, kind: str, label: str) -> None:
        prefix = f"fmesh_{kind}"
        self.counters = {name: CounterMetricFamily(f"{prefix}_{name}", text, labels=[label])
                         for name, text in DELIVERY_COUNTERS}
        self.latency = HistogramMetricFamily(f"{prefix}_attempt_seconds", "How long attempts took",
                                             labels=[label])
        self.dead_letters = GaugeMetricFamily(f"{prefix}_dead_letters", "Dead letters stored now "
                                              "(as `fmesh status` shows; a purge or replay lowers it)",
                                              labels=[label])
        self.inflight = GaugeMetricFamily(f"{prefix}_inflight", "Events being delivered", labels=[label])

    def add(self, name: str, counts: Counts, inflight: int, dead: dict[str, int] | None, subscription: str) -> None:
        for counter, family in self.counters.items():
            family.add_metric([name], getattr(counts, counter))
        _histogram(self.latency, [name], counts.latency)
        self.inflight.add_metric([name], inflight)
        if dead is not None:
            self.dead_letters.add_metric([name], dead.get(subscription, 0))

    def metrics(self) -> Iterator[Metric]:
        yield from self.counters.values()
        yield from (self.latency, self.dead_letters, self.inflight)


class MeshCollector:
    """Functions, sinks, bridges, triggers and what came in, as this node counted them."""

    def __init__(self, node: NodeOperations, depths: Depths) -> None:
        self.node = node
        self.depths = depths

    def collect(self) -> Iterator[Metric]:
        yield from self._events_in()
        yield from self._functions()
        yield from self._sinks()
        yield from self._triggers()

    def _events_in(self) -> Iterator[Metric]:
        tallies = self.node.tallies
        events = CounterMetricFamily("fmesh_events_in", "Events accepted, by who sent them (a token, "
                                     "trigger:<name>, function:<name> for replies, peer:<name>)", labels=["sender"])
        for sender, count in sorted(tallies.events_in.items()):
            events.add_metric([sender], count)
        unrouted = CounterMetricFamily("fmesh_events_unrouted", "Events accepted that matched no subscription")
        unrouted.add_metric([], tallies.unrouted)
        bridged = CounterMetricFamily("fmesh_bridged_in", "Events from other meshes' bridges: received, and "
                                      "of those dropped as duplicates; looped: dropped, this mesh was on their path",
                                      labels=["outcome"])
        for outcome, count in tallies.bridged.items():
            bridged.add_metric([outcome], count)
        yield from (events, unrouted, bridged)

    def _functions(self) -> Iterator[Metric]:
        family = Family("function", "function")
        replicas = GaugeMetricFamily("fmesh_function_replicas", "Replica processes running", labels=["function"])
        desired = GaugeMetricFamily("fmesh_function_replicas_desired", "Replicas the autoscaler wants",
                                    labels=["function"])
        pending = GaugeMetricFamily("fmesh_function_pending", "Deliveries stored for the function (the event "
                                    "log's depth), in flight or waiting", labels=["function"])
        cold = HistogramMetricFamily("fmesh_function_cold_start_seconds", "From an event waiting for a replica "
                                     "to the replica taking it, when none was ready", labels=["function"])
        oom = CounterMetricFamily("fmesh_function_out_of_memory", "Replicas lost to their memory limit",
                                  labels=["function"])
        tallies = self.node.tallies
        for status in self.node.function_status():
            labels, subscription, pool = [status.name], f"function:{status.name}", status.pool
            family.add(status.name, tallies.of(subscription), status.delivery.inflight, self.depths.dead_letters,
                       subscription)
            replicas.add_metric(labels, pool.ready + pool.starting + pool.draining)
            desired.add_metric(labels, pool.desired)
            if subscription in self.depths.pending:
                pending.add_metric(labels, self.depths.pending[subscription])
            if status.name in tallies.cold_starts:
                _histogram(cold, labels, tallies.cold_starts[status.name])
            oom.add_metric(labels, status.out_of_memory)
        yield from family.metrics()
        yield from (replicas, desired, pending, cold, oom)

    def _sinks(self) -> Iterator[Metric]:
        """Subscriptions to URLs and sinks (label `sink`: subscription:x, reply:x, deadletter:x),
        and bridges (label `bridge`: the bridge's name)."""
        sinks, bridges = Family("sink", "sink"), Family("bridge", "bridge")
        pending = GaugeMetricFamily("fmesh_sink_pending", "Deliveries stored for the sink", labels=["sink"])
        backlog = GaugeMetricFamily("fmesh_bridge_backlog", "Events waiting to cross the bridge", labels=["bridge"])
        oldest = GaugeMetricFamily("fmesh_bridge_oldest_waiting_seconds", "How long the oldest waiting event has "
                                   "waited", labels=["bridge"])
        connected = GaugeMetricFamily("fmesh_bridge_connected", "1 when the other mesh answers", labels=["bridge"])
        now = time.time()
        for sink in self.node.sink_status():
            counts, inflight = self.node.tallies.of(sink.name), sink.delivery.inflight
            if sink.bridge is None:
                sinks.add(sink.name, counts, inflight, self.depths.dead_letters, sink.name)
                if sink.name in self.depths.pending:
                    pending.add_metric([sink.name], self.depths.pending[sink.name])
                continue
            name = sink.name.split(":", 1)[1]
            bridges.add(name, counts, inflight, self.depths.dead_letters, sink.name)
            connected.add_metric([name], 1 if sink.bridge.state == "connected" else 0)
            if sink.name in self.depths.backlog:
                waiting, since = self.depths.backlog[sink.name]
                backlog.add_metric([name], waiting)
                oldest.add_metric([name], 0 if since is None else max(0.0, now - since))
        yield from sinks.metrics()
        yield from bridges.metrics()
        yield from (pending, backlog, oldest, connected)

    def _triggers(self) -> Iterator[Metric]:
        events = CounterMetricFamily("fmesh_trigger_events", "Events a trigger published since it started",
                                     labels=["trigger", "kind"])
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


def _histogram(family: HistogramMetricFamily, labels: list[str], histogram: Histogram) -> None:
    family.add_metric(labels, histogram.cumulative(), histogram.sum)


def metrics_text(node: NodeOperations, depths: Depths | None = None) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MeshCollector(node, depths or Depths()))  # type: ignore[arg-type]
    return generate_latest(registry)
