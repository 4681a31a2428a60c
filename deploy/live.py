"""The dashboard's live view: `GET /ui/live` streams what /v1/status says, once a second, as
server-sent events (`event: status`), to a bounded number of clients at once."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import HTTPException
from fastapi.responses import StreamingResponse

from fmesh.asgi import Receive, Scope, Send

LIVE_INTERVAL = 1.0   # seconds between two status snapshots
MAX_LIVE = 16         # open streams per node; more get 503

Snapshot = Callable[[], Awaitable[dict[str, Any]]]


class LiveStreams:
    """The open /ui/live streams: at most `limit`, one status snapshot per `interval` shared by
    all of them, and all ended by `end` (the mesh is stopping)."""

    def __init__(self, snapshot: Snapshot, interval: float = LIVE_INTERVAL, limit: int = MAX_LIVE) -> None:
        self._snapshot = snapshot
        self.interval = interval
        self.limit = limit
        self.open = 0
        self._ended = False
        self._stop: asyncio.Event | None = None
        self._last: tuple[float, bytes] | None = None

    def end(self) -> None:
        self._ended = True
        if self._stop is not None:
            self._stop.set()

    async def stream(self, allowed: Callable[[], bool]) -> AsyncIterator[bytes]:
        """SSE messages (`event: status`) until the client goes, `allowed()` turns false (its
        session ended, its token was revoked) or the mesh stops."""
        self._stop = self._stop or asyncio.Event()
        yield b"retry: 2000\n\n"
        while not self._ended and allowed():
            yield b"event: status\ndata: " + await self._message() + b"\n\n"
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval)
            except TimeoutError:
                pass

    def response(self, allowed: Callable[[], bool]) -> StreamingResponse:
        """The stream as a response that holds one of the `limit` places until it is done
        (503 when none is free)."""
        if self._ended:
            raise HTTPException(503, "the mesh is stopping")
        if self.open >= self.limit:
            raise HTTPException(503, f"{self.limit} live streams are open on this node already: close one "
                                "(another dashboard tab) or try again", headers={"Retry-After": "5"})
        self.open += 1
        return _Held(self.stream(allowed), self._release, media_type="text/event-stream",
                     headers={"x-accel-buffering": "no"})

    def _release(self) -> None:
        self.open -= 1

    async def _message(self) -> bytes:
        now = time.monotonic()
        if self._last is None or now - self._last[0] >= self.interval / 2:
            self._last = (now, json.dumps(await self._snapshot(), separators=(",", ":")).encode())
        return self._last[1]


class _Held(StreamingResponse):
    """A streaming response that calls `done` once it is over, however it ends."""

    def __init__(self, content: AsyncIterator[bytes], done: Callable[[], None], **options: Any) -> None:
        super().__init__(content, **options)
        self._done = done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._done()
