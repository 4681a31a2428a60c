"""A replica as the mesh sees it: state, in-flight calls, start, stop. Subclasses connect
it to a process: `PythonReplica` (a forked or fresh Python worker on the replica socket)
and `CommandReplica` (any program serving the CloudEvents HTTP binding on $PORT)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from fmesh.errors import HandlerError
from fmesh.events import Event, decode_data

OUTPUT_LINES = 20


class State(Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"   # chosen for scale-down or being killed: gets no new events
    STOPPED = "stopped"


@dataclass(slots=True)
class ReplyData:
    """Plain data a handler returned, to be wrapped into a reply event."""

    payload: bytes | None
    content_type: str

    @property
    def data(self) -> object:
        return decode_data(self.payload, self.content_type)


@dataclass(frozen=True)
class NotSent:
    """A target chose not to deliver the event, and it is done with it (a bridge would have
    sent it back to a mesh it came from): acked, and said so in the trail."""

    reason: str


Result = Event | ReplyData | NotSent | None


def replica_name(function: str, version: str, index: int | str) -> str:
    """`hello@1f0e2a/1`: the version in it tells an old replica's lines from a new one's."""
    return f"{function}@{version[:6]}/{index}" if version else f"{function}/{index}"


class Replica:
    """Bookkeeping common to every kind of replica."""

    def __init__(self, replica_id: str, function: str, index: int | str, version: str = "") -> None:
        self.id = replica_id
        self.function = function
        self.name = replica_name(function, version, index)  # shown in logs and status
        self.state = State.STARTING
        self.pid: int | None = None
        self.inflight = 0
        self.ready_at: float | None = None
        self.last_used = time.monotonic()
        self.exit_reason: str | None = None
        self.on_close: Callable[[Replica], None] = lambda replica: None
        self.output: deque[str] = deque(maxlen=OUTPUT_LINES)  # its last lines, for a failed start
        loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[None] = loop.create_future()
        self._closed: asyncio.Future[None] = loop.create_future()

    @property
    def routable(self) -> bool:
        return self.state is State.READY

    async def invoke(self, event: Event) -> Result:
        raise NotImplementedError

    def _request_stop(self) -> None:
        """Ask the process to finish what it has and exit."""

    def _disconnect(self) -> None:
        """Drop the connection to the process (it is being killed)."""

    def _fail_calls(self, error: HandlerError) -> None:
        """Fail every call in flight: the process is gone."""

    def mark_ready(self) -> None:
        self.state = State.READY
        self.ready_at = time.monotonic()
        _settle(self._ready)

    def fail_start(self, reason: str) -> None:
        self.exit_reason = reason
        _settle(self._ready, HandlerError(reason, status=500))

    async def wait_ready(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            raise HandlerError(f"replica {self.name} did not start within {timeout:g}s") from None

    async def last_output(self, timeout: float = 1.0) -> list[str]:
        """Its last lines of output, once it has ended (or after `timeout`): for saying why
        it did not start."""
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), timeout)
        except TimeoutError:
            pass
        return list(self.output)

    def process_exited(self, how: str) -> None:
        """The launcher saw the process end; its connection closing says the same, later."""
        self.exit_reason = self.exit_reason or how

    def closed(self, reason: str) -> None:
        """The process is gone: fail what it was doing, so those events are retried."""
        if self.state is State.STOPPED:
            return
        self.state = State.STOPPED
        self.exit_reason = self.exit_reason or reason
        _settle(self._ready, HandlerError(f"replica {self.name} exited before it was ready: {self.exit_reason}"))
        self._fail_calls(HandlerError(f"replica {self.name} stopped: {self.exit_reason}", status=503))
        _settle(self._closed)
        self.on_close(self)

    async def stop(self, grace: float = 5.0) -> None:
        """Let in-flight calls finish, then end the process (killing it after `grace`)."""
        if self.state is not State.STOPPED:
            self.state = State.DRAINING
            self._request_stop()
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), grace)
        except TimeoutError:
            self.kill("did not stop in time")
            await asyncio.shield(self._closed)

    def kill(self, reason: str = "killed") -> None:
        self.exit_reason = self.exit_reason or reason
        if self.state is not State.STOPPED:
            self.state = State.DRAINING  # out of routing now, not when the process is gone
        if self.pid:
            kill_process_group(self.pid)
        self._disconnect()


def kill_process_group(pid: int) -> None:
    """SIGKILL a replica and whatever it started: each replica leads its own session."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _settle(future: asyncio.Future, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
        future.exception()  # marked as retrieved: nobody may be waiting any more
