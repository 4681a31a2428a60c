"""What one client connection may hold: time to send its headers, a body that keeps
arriving, and a place under the node's connection cap.

uvicorn times out only a keep-alive connection between two requests. A client that
connects and sends nothing, sends its headers a byte at a time (slowloris), or declares
a body and stalls would keep its socket, its buffers and its task for good. The
protocol class here (uvicorn's own, httptools or h11, with a few hooks) adds:

- a header timeout, from the connection (or from the first byte of the next request
  on a keep-alive connection) to the end of the request headers: 408 and close, or a
  plain close when the client has sent nothing at all;
- a body timeout: a request body may pause at most that long, and once that long
  has passed it must have arrived at `min_body_rate` bytes/s on average: 408 and close;
- a header size cap: headers still arriving past `max_header_bytes` get 431 and a close,
  before a 64 MiB header is buffered whole (the node checks complete ones the same way);
- a connection cap: past it, a new connection takes the place of the connection idle
  the longest (one waiting for request headers, or between two requests), as nginx
  reuses its idle connections; when none is idle, the new one gets 503 and is closed.
  An idle-connection flood thus cannot use up the process's file descriptors, nor
  lock out the normal client whose request arrives right after it connects.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from fmesh.deploy.response_writes import CoalescedTransport

REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
           b"content-length: 24\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many connections now")
HEADERS_TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                     b"content-length: 29\r\nconnection: close\r\n\r\nthe request headers were late")
BODY_TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                  b"content-length: 29\r\nconnection: close\r\n\r\nthe request body came too slow")
REQUEST_LINE_ALLOWANCE = 8192  # the request line (method, URL) on top of the header section
DRAIN_SECONDS = 2.0  # how long a refused client's remaining bytes are read and dropped
MAX_CONNECTIONS = 10_000  # a default past which one process only spends memory on idle sockets


def headers_too_large(limit: int) -> bytes:
    """431 in the JSON the node answers for complete headers past the limit."""
    body = json.dumps({"error": f"request headers are over the limit of {limit} bytes"}).encode()
    return (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))


def default_max_connections(soft_fd_limit: int | None = None) -> int:
    """Connections the cap allows by default: the soft fd limit minus a reserve for the
    mesh's own files, replicas, pipes and outgoing connections (a quarter, at least 256,
    and never more than half), at most MAX_CONNECTIONS."""
    soft = soft_fd_limit if soft_fd_limit is not None else resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, max(soft // 2, soft - max(256, soft // 4))))


@dataclass
class ClientLimits:
    """The limits, and the server-wide list of idle connections (oldest first) to evict."""

    header_timeout: float = 10.0
    body_timeout: float = 10.0
    min_body_rate: int = 4096
    max_connections: int = MAX_CONNECTIONS
    max_header_bytes: int = 64 * 1024
    idle: OrderedDict[Any, None] = field(default_factory=OrderedDict)

    def protocol(self, http: str = "auto") -> type[asyncio.Protocol]:
        """uvicorn's HTTP protocol class for `http` (auto: httptools when installed, else h11),
        with these limits: what to give uvicorn.Config as `http`."""
        if http == "h11":
            from uvicorn.protocols.http.h11_impl import H11Protocol as base
        else:
            from uvicorn.protocols.http.auto import AutoHTTPProtocol as base
        return type(f"Limited{base.__name__}", (LimitedConnection, base), {"limits": self})


class LimitedConnection:
    """Hooks on uvicorn's HTTP protocol: put first in the bases of its httptools or h11 class.

    The phases of a connection: "headers" (a request is due: header deadline, evictable),
    "body" (its body is due: body deadline), "app" (the app has it all: no deadline),
    "idle" (between requests: uvicorn's keep-alive timeout, evictable)."""

    limits: ClientLimits
    transport: CoalescedTransport
    server_state: Any
    cycle: Any
    flow: Any

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.phase, self.timer, self.refused = "headers", None, False
        self.phase_bytes = self.body_bytes = 0
        self.phase_started = self.last_byte = time.monotonic()
        if len(self.server_state.connections) >= self.limits.max_connections and not self.evict_oldest():
            self.refused = True
            transport.write(REFUSED)
            transport.close()
            return
        super().connection_made(CoalescedTransport(transport))  # type: ignore[misc]
        self.enter("headers")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.refused:
            return
        self.leave()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        if self.phase == "draining":
            return  # refused: what the client still sends is read and dropped until it hears
        if self.phase == "idle":
            self.enter("headers")
        before = self.cycle
        self.phase_bytes += len(data)
        if self.phase == "body":
            self.body_bytes += len(data)
            self.last_byte = time.monotonic()
        super().data_received(data)  # type: ignore[misc]
        if self.transport.get_protocol() is not self:  # upgraded to a WebSocket: no longer ours
            self.leave()
        elif self.phase == "headers" and self.cycle is before and self.headers_too_large():
            self.refuse_while_sending(headers_too_large(self.limits.max_header_bytes))
        elif self.cycle is not before and self.cycle is not None:
            self.enter("body" if self.cycle.more_body else "app")
        elif self.phase == "body" and not self.cycle.more_body:
            self.enter("app")

    def headers_too_large(self) -> bool:
        """Headers not done yet, and already past the limit: refused before they are all buffered."""
        return self.phase_bytes > self.limits.max_header_bytes + REQUEST_LINE_ALLOWANCE

    def _unsupported_upgrade_warning(self) -> None:
        """uvicorn logs two lines for each upgrade request when WebSockets are off (the mesh
        serves none): anyone could fill the log with them. The request is served as HTTP."""

    def on_response_complete(self) -> None:
        self.transport.flush()  # the whole response in one write (deploy/response_writes.py)
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing() and self.phase == "app":
            self.enter("idle")

    def enter(self, phase: str) -> None:
        self.leave()
        self.phase, self.phase_started, self.phase_bytes = phase, time.monotonic(), 0
        if phase in ("headers", "idle"):
            self.limits.idle[self] = None
        if phase == "headers":
            self.timer = asyncio.get_running_loop().call_later(self.limits.header_timeout, self.headers_late)
        elif phase == "body":
            self.body_bytes, self.last_byte = 0, self.phase_started
            self.arm_body_timer()

    def leave(self) -> None:
        self.limits.idle.pop(self, None)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def evict_oldest(self) -> bool:
        """Close the connection idle the longest to make room; False when none is idle."""
        while self.limits.idle:
            oldest, _ = self.limits.idle.popitem(last=False)
            if not oldest.transport.is_closing():
                oldest.leave()
                oldest.transport.close()
                return True
        return False

    def headers_late(self) -> None:
        self.timer = None
        nothing_sent = self.phase_bytes == 0
        in_flight = self.cycle is not None and not self.cycle.response_complete
        self.close_with(None if nothing_sent or in_flight else HEADERS_TIMED_OUT)

    def body_deadline(self) -> float:
        """When the body is late: a pause of body_timeout, or an average below the minimum rate."""
        grace, rate = self.limits.body_timeout, self.limits.min_body_rate
        by_rate = self.phase_started + max(grace, self.body_bytes / rate) if rate else float("inf")
        return min(self.last_byte + grace, by_rate)

    def arm_body_timer(self) -> None:
        delay = max(0.0, self.body_deadline() - time.monotonic())
        self.timer = asyncio.get_running_loop().call_later(delay, self.body_late)

    def body_late(self) -> None:
        self.timer = None
        if self.flow.read_paused or getattr(self.cycle, "waiting_for_100_continue", False):
            self.enter("body")  # the app is not reading it yet: no fault of the client's
        elif time.monotonic() < self.body_deadline():
            self.arm_body_timer()  # bytes came meanwhile
        else:
            started = self.cycle.response_started
            self.cycle.disconnected = True  # the app's receive() gets http.disconnect, its send() is dropped
            self.cycle.message_event.set()
            self.close_with(None if started else BODY_TIMED_OUT)

    def refuse_while_sending(self, answer: bytes) -> None:
        """Answer a client that is still sending, and close a little later: closing with its
        bytes unread would reset the connection, and the client would never see the answer."""
        self.leave()
        self.phase = "draining"
        self.transport.write(answer)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.timer = asyncio.get_running_loop().call_later(DRAIN_SECONDS, self.transport.close)

    def close_with(self, answer: bytes | None) -> None:
        self.leave()
        if self.transport.is_closing():
            return
        if answer is not None:
            self.transport.write(answer)
        self.transport.close()
