"""How `fmesh up` stops: on SIGTERM or Ctrl-C, within its shutdown grace, whoever is connected.

uvicorn alone would wait for every open response before it stops the app, forever for a
`fmesh logs -f`, and would then re-raise the signal so that the process dies by it. Here
the log streams end first, the HTTP server gets part of the grace to finish what else it
serves, the node gets what is left, and the process says in one line why and when it stopped.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType

import uvicorn
from fmesh.deploy.node import Node

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _QuietStartupFailure(logging.Filter):
    """The node says in one line why it could not start; uvicorn's own line would repeat it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Application startup failed")


logging.getLogger("uvicorn.error").addFilter(_QuietStartupFailure())


class MeshServer(uvicorn.Server):
    """A uvicorn server that stops its node within `grace` seconds of the signal."""

    def __init__(self, config: uvicorn.Config, node: Node, grace: float,
                 before_stop: Callable[[float], Awaitable[None]] | None = None) -> None:
        super().__init__(config)
        self.node = node
        self.grace = grace
        self.before_stop = before_stop  # the ingress workers' stop, given part of the grace
        self.reason = "on request"
        self.signalled_at: float | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Like uvicorn's, without re-raising the signal after a clean stop: it exits 0."""
        if threading.current_thread() is not threading.main_thread():
            yield  # only the main thread can take signals
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            self.force_exit = self.force_exit or sig == signal.SIGINT  # a second Ctrl-C: stop waiting
            return
        self.reason = f"on {signal.Signals(sig).name}"
        self.signalled_at = time.monotonic()
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.signalled_at = self.signalled_at or time.monotonic()
        self.node.stop_deadline = self.signalled_at + self.grace
        self.node.end_streams()
        if self.before_stop is not None:
            await self.before_stop(self.left() / 3)
        # Responses still open after this get cancelled; the node keeps the other half.
        self.config.timeout_graceful_shutdown = max(0.1, self.left() / 2)
        await super().shutdown(sockets)

    def left(self) -> float:
        return max(0.0, (self.signalled_at or time.monotonic()) + self.grace - time.monotonic())

    @property
    def clean(self) -> bool:
        """Whether the stop finished everything it had to, in time."""
        return not self.force_exit and not self.node.stop_overran

    def stopped_line(self) -> str:
        took = time.monotonic() - (self.signalled_at or time.monotonic())
        how = ""
        if self.force_exit:
            how = ", hurried by a second signal: what was still stopping was cut short"
        elif self.node.stop_overran:
            how = f", past its shutdown grace of {self.grace:g}s: the rest of the shutdown was left undone"
        return f"stopped {self.reason} after {took:.1f}s{how} (unfinished deliveries stay stored)"
