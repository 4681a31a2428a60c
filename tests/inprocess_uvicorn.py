"""uvicorn serving an ASGI app in the test's own event loop, on a loopback port."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn


@asynccontextmanager
async def serving(config: uvicorn.Config) -> AsyncIterator[int]:
    """Serve `config` until the block ends; yields the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    running = uvicorn.Server(config)
    task = asyncio.create_task(running.serve(sockets=[sock]))
    async with asyncio.timeout(10):
        while not running.started:
            await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        running.should_exit = True
        await task
