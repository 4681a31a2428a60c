"""A connection the far side resets just as it opens (found by bench/chaos.py cutting a
sink's connections): anyio then fails with AttributeError instead of an httpx error.
The HTTP sink, and the mesh's client of a command function, must call that a connection
error, retried, not a dead letter; and a bridge must settle every event of a batch
whatever its sink raised, never leave it hanging."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fmesh.runtime.command_replica import CommandReplica
from fmesh.runtime.sinks.base import SinkOptions
from fmesh.runtime.sinks.bridge import BridgeAuth, BridgeSink
from fmesh.runtime.sinks.http import HttpSink

from fmesh.errors import HandlerError
from fmesh.events import new_event

URL = "http://127.0.0.1:9/events"


def reset_as_it_opens(request: httpx.Request) -> httpx.Response:
    # what anyio 4.16 on uvloop raises from `stream.get_extra_info("ssl_object")` in httpcore
    raise AttributeError("'NoneType' object has no attribute 'getpeername'")


def sink(handler) -> HttpSink:
    return HttpSink(URL, SinkOptions(), transport=httpx.MockTransport(handler))


async def test_a_reset_as_the_connection_opens_is_a_retryable_connection_error():
    http = sink(reset_as_it_opens)
    with pytest.raises(HandlerError) as caught:
        await http.invoke(new_event("t", "/s"), timeout=1)
    await http.stop()
    assert caught.value.retryable
    assert f"cannot reach {URL}: connection reset as it opened" in str(caught.value)


async def test_a_bridge_hands_the_same_retryable_error_to_every_event_of_a_batch():
    bridge = BridgeSink(sink(reset_as_it_opens), "mesh-a", BridgeAuth(peer="a"))
    bridge.stats.peer_mesh = "mesh-b"  # known already: no /healthz first
    results = await asyncio.wait_for(asyncio.gather(
        *(bridge.invoke(new_event("t", "/s"), timeout=1) for _ in range(3)), return_exceptions=True), 5)
    await bridge.stop()
    assert all(isinstance(r, HandlerError) and r.retryable for r in results), results


async def test_a_bridge_settles_a_batch_whose_sink_broke_unexpectedly():
    def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("a bug below the bridge")

    bridge = BridgeSink(sink(broken), "mesh-a", BridgeAuth(peer="a"))
    bridge.stats.peer_mesh = "mesh-b"
    # Before, the error ended the batch's task and the events waited for a timeout of 30 s.
    results = await asyncio.wait_for(asyncio.gather(
        *(bridge.invoke(new_event("t", "/s"), timeout=30) for _ in range(3)), return_exceptions=True), 5)
    await bridge.stop()
    assert [str(r) for r in results] == ["a bug below the bridge"] * 3


async def test_a_command_function_reset_as_the_connection_opens_is_retried():
    # a program SIGKILLed just as the mesh connects to it: the event goes to another replica
    replica = CommandReplica("r1", "echo", 1, port=9, transport=httpx.MockTransport(reset_as_it_opens))
    with pytest.raises(HandlerError) as caught:
        await replica.invoke(new_event("t", "/s"))
    await replica._client.aclose()
    assert caught.value.retryable and caught.value.status == 503
    assert "replica echo/1 on port 9" in str(caught.value)
