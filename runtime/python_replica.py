"""A Python replica: a worker process speaking frames over the mesh's replica socket."""

from __future__ import annotations

import asyncio
import itertools

from fmesh.runtime.replica import Replica, ReplyData, Result, State
from fmesh.runtime.wire import Coalescing, Frame, Kind, encode, read_frame

from fmesh.errors import HandlerError
from fmesh.events import Event

# How long a process that exited may still have its control connection on the way (the hub
# reads its HELLO on the same loop as the launcher's exit report): then it never connected.
CONNECT_GRACE = 1.0


class PythonReplica(Replica):
    def __init__(self, replica_id: str, function: str, index: int, version: str = "") -> None:
        super().__init__(replica_id, function, index, version)
        self._requests = itertools.count(1)
        self._calls: dict[int, asyncio.Future[Result]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._out: Coalescing | None = None     # frames written together at the end of the loop turn
        self.out_of_memory = 0

    def attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pid: int | None) -> None:
        """The replica's control connection arrived; read its frames until it closes."""
        self._writer = writer
        self._out = Coalescing(writer)
        self.pid = pid or self.pid
        asyncio.get_running_loop().create_task(self._read(reader), name=f"replica {self.name}")

    def process_exited(self, how: str) -> None:
        """One that never connected has no connection to close and say so: its start fails
        now, not when the start timeout runs out."""
        super().process_exited(how)
        if self._writer is None:
            asyncio.get_running_loop().call_later(CONNECT_GRACE, self._if_never_connected)

    def _if_never_connected(self) -> None:
        if self._writer is None:
            self.exit_reason = f"{self.exit_reason} before it connected to the mesh"
            self.closed(self.exit_reason)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                self._on_frame(await read_frame(reader))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except ValueError as exc:  # a frame the mesh cannot read: the process is not to be trusted
            self.kill(f"sent a frame the mesh cannot read ({exc})")
        if self._writer is not None:
            self._writer.close()  # our end too: otherwise its socket stays open until collected
        self.closed(self.exit_reason or "its connection closed")

    def _on_frame(self, frame: Frame) -> None:
        if frame.kind is Kind.RESULT:
            call = self._calls.pop(frame.request, None)
            if call is not None and not call.done():
                if frame.meta.get("ok"):
                    call.set_result(_result(frame))
                else:
                    call.set_exception(self._failure(frame.meta))
        elif frame.kind is Kind.READY:
            self.mark_ready()
        elif frame.kind is Kind.FAILED:
            where = frame.meta.get("where")
            self.fail_start(f"handler failed to load: {where + ': ' if where else ''}{frame.meta.get('error')}")

    def _failure(self, meta: dict) -> HandlerError:
        if meta.get("exiting") and self.state is State.READY:
            self.state = State.DRAINING  # it is about to exit: send it nothing more
        if meta.get("oom"):
            self.out_of_memory += 1
            self.exit_reason = "out of memory"
        return HandlerError(meta.get("error", "handler failed"), status=500)

    async def invoke(self, event: Event) -> Result:
        if self._writer is None or self.state is State.STOPPED:
            raise HandlerError(f"replica {self.name} is not running", status=503)
        request = next(self._requests)
        call: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._calls[request] = call
        self._send(encode(Kind.INVOKE, request, event.attributes, event.payload))
        try:
            return await call
        finally:
            self._calls.pop(request, None)

    def _send(self, frame: bytes) -> None:
        if self._out is not None:
            self._out.write(frame)

    def _request_stop(self) -> None:
        if self._writer is not None:
            self._send(encode(Kind.STOP))

    def _disconnect(self) -> None:
        if self._writer is not None:
            self._writer.close()  # the reader then sees the end and calls closed()
        else:
            self.closed(self.exit_reason or "killed")

    def _fail_calls(self, error: HandlerError) -> None:
        for call in self._calls.values():
            if not call.done():
                call.set_exception(error)
        self._calls.clear()


def _result(frame: Frame) -> Result:
    reply = frame.meta.get("reply")
    if reply == "event":
        return Event(frame.meta["attributes"], frame.body)
    if reply == "data":
        return ReplyData(frame.body, frame.meta.get("content_type", "application/json"))
    return None
