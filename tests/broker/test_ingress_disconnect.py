"""A client gone in the middle of its body (it left, or the mesh cut it off as too slow):
what came of the body is not an event, and nothing is stored or answered."""

from __future__ import annotations

import pytest
from fmesh.broker.broker import Broker
from fmesh.broker.filters import compile_shorthand
from fmesh.broker.ingress import Ingress
from fmesh.broker.memory_log import MemoryEventLog

from fmesh.asgi import read_stream
from fmesh.errors import ClientGone

HEADERS = [(b"ce-id", b"1"), (b"ce-source", b"/t"), (b"ce-type", b"com.example"), (b"ce-specversion", b"1.0"),
           (b"content-type", b"application/json"), (b"content-length", b"100")]


def receiving(*messages):
    queue = list(messages)

    async def receive():
        return queue.pop(0)

    return receive


async def test_a_disconnect_in_the_middle_of_a_body_stores_nothing_and_answers_nothing():
    log = MemoryEventLog()
    broker = Broker(log)
    broker.subscribe("sub", compile_shorthand({}))
    sent = []

    async def send(message):
        sent.append(message)

    receive = receiving({"type": "http.request", "body": b'{"a": 1', "more_body": True}, {"type": "http.disconnect"})
    await Ingress(broker.publish)({"type": "http", "method": "POST", "headers": HEADERS}, receive, send)
    assert await log.claim("sub", 10) == []  # not the truncated '{"a": 1' as a whole event
    assert sent == []


async def test_read_stream_says_how_much_came_before_the_client_left():
    receive = receiving({"type": "http.request", "body": b"x" * 10, "more_body": True}, {"type": "http.disconnect"})
    with pytest.raises(ClientGone) as caught:
        await read_stream(receive, 1000)
    assert caught.value.received == 10
