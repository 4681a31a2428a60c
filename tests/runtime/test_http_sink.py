"""The HTTP sink against a real server that answers badly: slowly, or with too much."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from fmesh.runtime.sinks import open_sink
from fmesh.runtime.sinks.base import SinkOptions
from fmesh.runtime.sinks.http import MAX_ANSWER_BYTES, HttpSink

from fmesh.errors import HandlerError
from fmesh.events import new_event

Answer = Callable[[asyncio.StreamWriter], Awaitable[None]]
REPLY_HEADERS = b"ce-specversion: 1.0\r\nce-id: r1\r\nce-type: reply\r\nce-source: /far\r\ncontent-type: text/plain\r\n"


async def serving(answer: Answer) -> AsyncIterator[str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        try:
            await answer(writer)
        except ConnectionError:
            pass  # the sink gave up on us
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.close()


@pytest.fixture
async def url_of():
    servers = []

    async def start(answer: Answer) -> str:
        server = serving(answer)
        servers.append(server)
        return await anext(server)

    yield start
    for server in servers:
        await server.aclose()


async def post_to(url: str, timeout: float) -> tuple[object, float]:
    sink = HttpSink(url, SinkOptions())
    started = time.monotonic()
    try:
        return await asyncio.wait_for(sink.invoke(new_event("t", "/s"), timeout), 10), time.monotonic() - started
    except HandlerError as exc:
        return exc, time.monotonic() - started
    finally:
        await sink.stop()


async def test_an_answer_trickling_in_fails_the_attempt_at_its_timeout(url_of):
    """httpx's timeout bounds each read: a byte every 0.2 s never met it, and the attempt
    stayed in flight for as long as the server kept sending."""
    async def trickle(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
        for _ in range(100):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.2)

    error, took = await post_to(await url_of(trickle), timeout=1.0)
    assert isinstance(error, HandlerError) and error.retryable
    assert "timed out after 1s" in str(error)
    assert took < 5


async def test_a_reply_bigger_than_an_event_may_be_is_refused_not_read_whole(url_of):
    async def huge(writer: asyncio.StreamWriter) -> None:
        size = 4 * MAX_ANSWER_BYTES
        writer.write(b"HTTP/1.1 200 OK\r\n" + REPLY_HEADERS + b"content-length: %d\r\n\r\n" % size)
        for _ in range(size // 65536):
            writer.write(b"y" * 65536)
            await writer.drain()

    error, _ = await post_to(await url_of(huge), timeout=5)
    assert isinstance(error, HandlerError) and not error.retryable
    assert f"answered 200 with more than {MAX_ANSWER_BYTES} bytes" in str(error)


async def test_a_huge_error_page_is_still_the_error_it_says(url_of):
    async def page(writer: asyncio.StreamWriter) -> None:
        size = 2 * MAX_ANSWER_BYTES
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: %d\r\n\r\n" % size)
        writer.write(b"z" * size)
        await writer.drain()

    error, _ = await post_to(await url_of(page), timeout=5)
    assert isinstance(error, HandlerError) and error.retryable and error.status == 503


async def test_a_reply_within_bounds_comes_back(url_of):
    async def reply(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n" + REPLY_HEADERS + b"content-length: 2\r\n\r\nok")
        await writer.drain()

    event, _ = await post_to(await url_of(reply), timeout=5)
    assert event.type == "reply" and event.payload == b"ok", event


async def test_a_mesh_taking_bigger_events_takes_replies_as_big(url_of):
    """`fmesh up --max-event-bytes 4MiB` let 4 MiB events in, but a sink's 2 MiB reply was
    still refused at the default 1 MiB."""
    size = 2 * MAX_ANSWER_BYTES

    async def big(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n" + REPLY_HEADERS + b"content-length: %d\r\n\r\n" % size)
        writer.write(b"y" * size)
        await writer.drain()

    sink = open_sink(await url_of(big), None, max_reply_bytes=4 * MAX_ANSWER_BYTES)
    try:
        reply = await asyncio.wait_for(sink.invoke(new_event("t", "/s"), 5), 10)
    finally:
        await sink.stop()
    assert len(reply.payload) == size
