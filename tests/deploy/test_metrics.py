"""/metrics in-process, on a memory store: a subscription's counts and depths, and a store
that does not answer leaving its figures out of a scrape instead of holding it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fmesh.broker.filters import compile_shorthand
from fmesh.deploy import metrics
from fmesh.deploy.node import Node
from fmesh.deploy.server import build
from fmesh.runtime.runtime import SinkSpec
from prometheus_client.parser import text_string_to_metric_families
from support import Receiver

from fmesh.settings import NodeSettings

EVENT = {"specversion": "1.0", "id": "m-1", "source": "/t", "type": "audit.me"}


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    node, _, _ = build(NodeSettings(data_dir=tmp_path / "data", store="memory://", token="t", launcher="subprocess"))
    await node.start()
    yield node
    await node.stop()


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple], float]:
    text = (await client.get("/metrics")).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_a_sink_counts_its_deliveries_and_a_hung_store_leaves_only_its_depths_out(node, monkeypatch):
    receiver = Receiver()
    try:
        audit = SinkSpec("subscription:audit", receiver.url)
        await node.deploy_subscription(audit, compile_shorthand({"type": "audit.me"}))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(node), base_url="http://mesh") as client:
            assert (await client.post("/", json=EVENT, headers={"content-type": "application/cloudevents+json"})
                    ).status_code == 202
            for _ in range(200):   # bounded: the delivery is counted, or the test fails below
                if node.tallies.of("subscription:audit").delivered:
                    break
                await asyncio.sleep(0.05)
            sink = (("sink", "subscription:audit"),)
            samples = await scrape(client)
            assert samples["fmesh_sink_delivered_total", sink] == 1
            assert samples["fmesh_sink_attempt_seconds_count", sink] == 1
            assert samples["fmesh_sink_pending", sink] == 0 and samples["fmesh_sink_dead_letters", sink] == 0
            assert samples["fmesh_events_in_total", (("sender", "anonymous"),)] == 1

            async def hung(*args: object) -> int:
                await asyncio.Event().wait()
                return 0

            monkeypatch.setattr(node.log, "pending", hung)
            monkeypatch.setattr(metrics, "DEPTH_TIMEOUT", 0.2)
            samples = await scrape(client)
            assert ("fmesh_sink_pending", sink) not in samples
            assert samples["fmesh_sink_dead_letters", sink] == 0 and samples["fmesh_sink_delivered_total", sink] == 1
    finally:
        receiver.close()
