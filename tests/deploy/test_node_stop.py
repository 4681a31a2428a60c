"""A node's stop is bounded: a background task that does not end when cancelled, or a store
that does not answer the node's leaving, cannot keep the process from exiting (a sidecar
once stayed up after SIGTERM)."""

from __future__ import annotations

import asyncio

import fmesh.deploy.node as node_module
import pytest
from fmesh.deploy.node import Node

from fmesh.settings import NodeSettings


async def stubborn(started: asyncio.Event, release: asyncio.Event) -> None:
    """Ignores its cancellation until `release` is set."""
    started.set()
    while not release.is_set():
        try:
            await release.wait()
        except asyncio.CancelledError:
            continue


@pytest.fixture
async def node(tmp_path, monkeypatch, caplog):
    """A started node whose stop waits 0.2 s for what does not end, its warnings in caplog."""
    monkeypatch.setattr(node_module, "BACKGROUND_STOP_TIMEOUT", 0.2)
    caplog.set_level("WARNING", logger="fmesh")
    node = Node(NodeSettings(tmp_path / "data", store="memory://"))
    await node.start()
    return node


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("fmesh")]


async def test_a_task_that_ignores_its_cancellation_does_not_hold_the_stop(node, caplog):
    started, release = asyncio.Event(), asyncio.Event()
    node.run_in_background("stubborn work", stubborn(started, release))
    await started.wait()  # a task cancelled before it ran never gets the chance to ignore it
    asyncio.get_running_loop().call_later(5, release.set)  # so that a stop that waits for it ends too
    began = asyncio.get_running_loop().time()
    await node.stop(grace=1)
    assert asyncio.get_running_loop().time() - began < 4, "the stop waited for the stubborn task"
    assert any("'stubborn work' did not stop within 0.2s" in line for line in warnings(caplog)), warnings(caplog)


async def test_a_store_that_does_not_answer_the_leaving_does_not_hold_the_stop(node, monkeypatch, caplog):
    async def never() -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(node.membership, "leave", never)
    async with asyncio.timeout(10):
        await node.stop(grace=1)
    assert any("could not say this node is leaving" in line for line in warnings(caplog)), warnings(caplog)
