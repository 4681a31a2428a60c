"""The mesh's replica socket: where every replica connects its control channel and logs.

A replica opens three connections and names itself in a HELLO frame on each; the hub
hands the control connection to the waiting `Replica` and copies the stdout and stderr
connections, line by line, into the function's logs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from fmesh.runtime.python_replica import PythonReplica
from fmesh.runtime.wire import Kind, read_frame

LogLine = Callable[[PythonReplica, str, str], None]  # (replica, stream, line)


class ReplicaHub:
    def __init__(self, socket_path: Path, on_log: LogLine) -> None:
        self.socket_path = socket_path
        self._on_log = on_log
        self._expected: dict[str, PythonReplica] = {}
        self._server: asyncio.Server | None = None
        self._streams: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._accept, path=str(self.socket_path), limit=2**20)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._streams):
                task.cancel()
            self._server = None
        self.socket_path.unlink(missing_ok=True)

    def expect(self, replica: PythonReplica) -> None:
        self._expected[replica.id] = replica

    def forget(self, replica: PythonReplica) -> None:
        self._expected.pop(replica.id, None)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hello = await asyncio.wait_for(read_frame(reader), 10)
        except (asyncio.IncompleteReadError, TimeoutError, ValueError, ConnectionError):
            writer.close()
            return
        replica = self._expected.get(hello.meta.get("replica", ""))
        if hello.kind is not Kind.HELLO or replica is None:
            writer.close()  # not one of ours
            return
        stream = hello.meta.get("stream")
        if stream == "control":
            replica.attach(reader, writer, hello.meta.get("pid"))
            return
        task = asyncio.current_task()
        self._streams.add(task)  # type: ignore[arg-type]
        try:
            await self._copy_lines(replica, str(stream), reader)
        except asyncio.CancelledError:
            pass  # the hub is stopping: a log stream just ends
        finally:
            self._streams.discard(task)  # type: ignore[arg-type]
            writer.close()

    async def _copy_lines(self, replica: PythonReplica, stream: str, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # a line longer than the limit: take it in pieces
                line = await reader.read(2**20)
            except ConnectionError:
                return
            if not line:
                return
            self._on_log(replica, stream, line.decode("utf-8", "replace").rstrip("\n"))
