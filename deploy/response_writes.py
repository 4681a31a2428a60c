"""One write(2) per HTTP response, not one per ASGI message.

uvicorn writes a response's status line and headers to the socket as soon as the app
sends `http.response.start`, and its body with a second write when the app sends
`http.response.body`. For the ingress's 202 that is two system calls (and two TCP
segments for the client to read) where one does: the first write alone was 11 % of the
loop's time at full ingress, the second 3 %.

`CoalescedTransport` sits between uvicorn's protocol and the real transport: writes are
held until the response is complete (`LimitedConnection.on_response_complete` flushes),
a close, or the end of the loop turn at the latest, so a streamed response still goes
out as it is produced, a turn at a time.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescedTransport:
    """An `asyncio.Transport` whose writes go out together at `flush` (see the module docstring)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()  # once: on Python 3.11 each lookup is a getpid(2)
        self._pending: list[bytes] = []
        self._due: asyncio.Handle | None = None  # the flush at the end of this turn

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._due = self._loop.call_soon(self.flush)
        self._pending.append(bytes(data) if not isinstance(data, bytes) else data)  # a buffer may be reused

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        if self._due is not None:
            self._due.cancel()
            self._due = None
        if self._pending:
            pending, self._pending = self._pending, []
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(chunk) for chunk in self._pending)

    def __getattr__(self, name: str) -> Any:  # the rest is the real transport's
        return getattr(self._transport, name)
