"""The mesh's side of one Python replica: its connection, its in-flight calls, its state."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from fmesh.errors import HandlerError
from fmesh.events import Event, decode_data
from fmesh.runtime.wire import Frame, Kind, encode, read_frame


class State(Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"   # chosen for scale-down: gets no new events
    STOPPED = "stopped"


@dataclass(slots=True)
class ReplyData:
    """Plain data a handler returned, to be wrapped into a reply event."""

    payload: bytes | None
    content_type: str

    @property
    def data(self) -> object:
        return decode_data(self.payload, self.content_type)


Result = Event | ReplyData | None


class Replica:
    """One replica process, as seen from the mesh."""

    def __init__(self, replica_id: str, function: str, index: int) -> None:
        self.id = replica_id
        self.function = function
        self.name = f"{function}/{index}"  # shown in logs and status
        self.state = State.STARTING
        self.pid: int | None = None
        self.inflight = 0
        self.created_at = time.monotonic()
        self.ready_at: float | None = None
        self.last_used = self.created_at
        self.exit_reason: str | None = None
        self._requests = itertools.count(1)
        self._calls: dict[int, asyncio.Future[Result]] = {}
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writer: asyncio.StreamWriter | None = None
        self.on_close: Callable[[Replica], None] = lambda replica: None

    @property
    def routable(self) -> bool:
        return self.state is State.READY

    def attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pid: int | None) -> None:
        """The replica's control connection arrived; read its frames until it closes."""
        self._writer = writer
        self.pid = pid or self.pid
        asyncio.get_running_loop().create_task(self._read(reader), name=f"replica {self.name}")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                self._on_frame(await read_frame(reader))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        self.closed(self.exit_reason or "its connection closed")

    def _on_frame(self, frame: Frame) -> None:
        if frame.kind is Kind.RESULT:
            call = self._calls.pop(frame.request, None)
            if call is not None and not call.done():
                call.set_result(_result(frame)) if frame.meta.get("ok") else call.set_exception(
                    HandlerError(frame.meta.get("error", "handler failed"), status=500))
        elif frame.kind is Kind.READY:
            self.state = State.READY
            self.ready_at = time.monotonic()
            _settle(self._ready)
        elif frame.kind is Kind.FAILED:
            self.exit_reason = f"handler failed to load: {frame.meta.get('error')}"
            _settle(self._ready, HandlerError(self.exit_reason, status=500))

    async def wait_ready(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            raise HandlerError(f"replica {self.name} did not start within {timeout:g}s") from None

    async def invoke(self, event: Event) -> Result:
        if self._writer is None or self.state is State.STOPPED:
            raise HandlerError(f"replica {self.name} is not running")
        request = next(self._requests)
        call: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._calls[request] = call
        self._writer.write(encode(Kind.INVOKE, request, event.attributes, event.payload))
        try:
            return await call
        finally:
            self._calls.pop(request, None)

    def closed(self, reason: str) -> None:
        """The process is gone: fail what it was doing, so those events are retried."""
        if self.state is State.STOPPED:
            return
        self.state = State.STOPPED
        self.exit_reason = reason
        error = HandlerError(f"replica {self.name} stopped: {reason}", status=503)
        _settle(self._ready, HandlerError(f"replica {self.name} exited before it was ready: {reason}"))
        for call in self._calls.values():
            if not call.done():
                call.set_exception(error)
        self._calls.clear()
        _settle(self._closed)
        self.on_close(self)

    async def stop(self, grace: float = 5.0) -> None:
        """Let in-flight calls finish, then end the process (killing it after `grace`)."""
        if self.state is not State.STOPPED:
            self.state = State.DRAINING
            if self._writer is not None:
                self._writer.write(encode(Kind.STOP))
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), grace)
        except TimeoutError:
            self.kill()
            await asyncio.shield(self._closed)

    def kill(self, reason: str = "killed") -> None:
        self.exit_reason = self.exit_reason or reason
        if self.state is not State.STOPPED:
            self.state = State.DRAINING  # out of routing now, not when the socket closes
        if self.pid:
            try:
                os.killpg(self.pid, signal.SIGKILL)  # the replica leads its own session
            except (ProcessLookupError, PermissionError):
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self._writer is not None:
            self._writer.close()
        else:
            self.closed(reason)


def _result(frame: Frame) -> Result:
    reply = frame.meta.get("reply")
    if reply == "event":
        return Event(frame.meta["attributes"], frame.body)
    if reply == "data":
        return ReplyData(frame.body, frame.meta.get("content_type", "application/json"))
    return None


def _settle(future: asyncio.Future, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
        future.exception()  # marked as retrieved: nobody may be waiting any more
