"""A response goes out in one write(2) (deploy/response_writes.py), on uvicorn's own
protocols with the client limits, through a real socket."""

from __future__ import annotations

import asyncio
from asyncio import selector_events

import pytest
import uvicorn
from fmesh.deploy.connections import ClientLimits
from inprocess_uvicorn import serving


async def app(scope, receive, send):
    """202 in one piece at `/`; at `/stream`, a body in two chunks a moment apart."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b"later"})
        return
    await send({"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


@pytest.fixture
def socket_writes(monkeypatch):
    """What was written to sockets in this process, one (local port, bytes) a write call on
    the real transport; `answers` picks the server's."""
    writes: list[tuple[int, bytes]] = []
    real = selector_events._SelectorSocketTransport.write

    def write(self, data):
        writes.append((self.get_extra_info("sockname")[1], bytes(data)))
        real(self, data)

    monkeypatch.setattr(selector_events._SelectorSocketTransport, "write", write)
    return writes


@pytest.fixture(params=["httptools", "h11"])
async def server(request, socket_writes):
    config = uvicorn.Config(app, http=ClientLimits().protocol(request.param), lifespan="off", log_level="warning",
                            loop="asyncio")
    async with serving(config) as port:
        yield port


async def exchange(port: int, path: str, requests: int = 1) -> bytes:
    """Send `requests` POSTs on one connection, one after the other; return what came back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = b""
    for _ in range(requests):
        writer.write(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{{}}".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if line)
        length = int(fields[b"content-length"])
        got += head + await asyncio.wait_for(reader.readexactly(length), 5)
    writer.close()
    return got


def answers(writes: list[tuple[int, bytes]], port: int) -> list[bytes]:
    return [data for local, data in writes if local == port]


async def test_each_response_is_one_write_with_its_headers_and_body(server, socket_writes):
    got = await exchange(server, "/", requests=3)
    assert got.count(b"HTTP/1.1 202") == 3
    written = answers(socket_writes, server)
    assert len(written) == 3
    assert all(w.startswith(b"HTTP/1.1 202") and w.endswith(b"\r\n\r\n{}") for w in written)


async def test_a_streamed_body_goes_out_as_it_is_produced(server, socket_writes):
    answer = await exchange(server, "/stream")
    assert answer.endswith(b"\r\n\r\nfirstlater")
    written = answers(socket_writes, server)
    assert len(written) == 2  # the headers and the first chunk at the end of their turn; then the rest
    assert written[0].endswith(b"\r\n\r\nfirst") and written[1] == b"later"
