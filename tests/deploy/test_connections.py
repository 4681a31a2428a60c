"""The client limits on uvicorn's own protocols (httptools and h11), in this process, and the
connection cap's default from the soft fd limit."""

from __future__ import annotations

import asyncio
import resource

import pytest
import uvicorn
from fmesh.deploy.connections import MAX_CONNECTIONS, ClientLimits, default_max_connections
from inprocess_uvicorn import serving


def test_the_default_cap_leaves_a_reserve_of_file_descriptors():
    assert default_max_connections(1024) == 768  # 256 kept for the mesh's own files, replicas and clients
    assert default_max_connections(256) == 128  # never more than half kept back
    assert default_max_connections(20_000) == MAX_CONNECTIONS  # idle sockets past it only cost memory
    assert default_max_connections(resource.RLIM_INFINITY) == MAX_CONNECTIONS


def test_the_default_cap_is_below_this_process_fd_limit():
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert default_max_connections() < soft or soft == resource.RLIM_INFINITY


async def echo_body(scope, receive, send):
    """A small ASGI app: answers 200 with the body it read (ASGI lifespan ignored)."""
    if scope["type"] != "http":
        return
    body, more = b"", True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body, more = body + message.get("body", b""), message.get("more_body", False)
    length = str(len(body)).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(params=["httptools", "h11"])
async def server(request):
    """uvicorn in this process with the client limits on the `http` protocol of the param."""
    limits = ClientLimits(header_timeout=0.5, body_timeout=0.5, min_body_rate=1000, max_connections=4,
                          max_header_bytes=4096)
    config = uvicorn.Config(echo_body, http=limits.protocol(request.param), lifespan="off", log_level="warning",
                            timeout_keep_alive=0.5)
    async with serving(config) as port:
        yield port


async def answer(port: int, sent: bytes) -> bytes:
    """All the server sends back on a connection after `sent`, until it closes it (5 s at most)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(sent)
    async with asyncio.timeout(5):
        got = await reader.read()
    writer.close()
    return got


async def test_headers_that_do_not_end_get_408(server):
    assert (await answer(server, b"POST / HTTP/1.1\r\nhost: x\r\nx-slow: ")).startswith(b"HTTP/1.1 408")


async def test_headers_past_the_size_cap_get_431_before_they_end(server, request):
    if request.node.callspec.params["server"] == "h11":
        pytest.skip("h11 refuses incomplete headers past its own 16 KiB (400) before the cap applies")
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(b"POST / HTTP/1.1\r\nhost: x\r\nx-big: ")
    try:
        for _ in range(64):  # 4 MiB, far past the cap, never finished
            writer.write(b"x" * 65536)
            await writer.drain()
    except ConnectionError:
        pass  # closed on us while sending: the answer is already in the buffer
    async with asyncio.timeout(5):
        got = await reader.read()
    writer.close()
    assert got.startswith(b"HTTP/1.1 431"), got[:100]


async def test_headers_within_the_cap_are_served(server):
    got = await answer(server, b"POST / HTTP/1.1\r\nhost: x\r\nx-h: " + b"y" * 3000 + b"\r\ncontent-length: 2\r\n"
                       b"connection: close\r\n\r\nok")
    assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"ok")


async def test_a_connection_that_sends_nothing_is_closed_without_an_answer(server):
    assert await answer(server, b"") == b""


async def test_a_stalled_body_gets_408(server):
    got = await answer(server, b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n0123456789")
    assert got.startswith(b"HTTP/1.1 408") and b"body" in got


async def test_a_whole_request_is_answered_then_closed_after_the_keepalive_timeout(server):
    got = await answer(server, b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nok")
    assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"ok")


async def test_past_the_cap_the_oldest_idle_connection_makes_room(server):
    idle = [await asyncio.open_connection("127.0.0.1", server) for _ in range(4)]
    got = await answer(server, b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
    assert got.startswith(b"HTTP/1.1 200")
    async with asyncio.timeout(5):
        assert await idle[0][0].read() == b""  # the oldest was closed to make room
    for _, writer in idle:
        writer.close()
