"""A replica of any program: it serves the CloudEvents HTTP binding on $PORT.

Ready once it accepts connections, or, if it answers `GET /healthz`, once that answer
is not a 5xx. Events go to it as HTTP POSTs in binary mode (structured on request);
a 2xx that is a CloudEvent is the reply, other answers are classified as Knative does.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from fmesh.runtime.launcher import describe_exit
from fmesh.runtime.logs import LogStore
from fmesh.runtime.replica import Replica, Result
from fmesh.runtime.sinks.responses import outcome

from fmesh.bindings.http import write_binary, write_structured
from fmesh.errors import HandlerError
from fmesh.events import Event
from fmesh.permissions import with_user_umask
from fmesh.tracing import hop_headers

READY_POLL = 0.02


class CommandReplica(Replica):
    def __init__(self, replica_id: str, function: str, index: int, port: int, structured: bool = False,
                 transport: Any = None, version: str = "") -> None:
        """`transport`: an `httpx.AsyncBaseTransport` to reach the program by (a test's mock)."""
        super().__init__(replica_id, function, index, version)
        self.port = port
        self.url = f"http://127.0.0.1:{port}/"
        self.structured = structured
        self._process: asyncio.subprocess.Process | None = None
        import httpx  # imported here: only meshes with command functions pay for it

        self._client = httpx.AsyncClient(trust_env=False, timeout=None, transport=transport)
        # AttributeError: anyio's, for a connection reset as it opens (a program killed just
        # then); see fmesh.runtime.sinks.http. A connection error like the others.
        self._transport_error = (httpx.TransportError, AttributeError)
        self._tasks: set[asyncio.Task] = set()

    async def launch(self, command: list[str], workdir: Path, env: dict[str, str], logs: LogStore) -> None:
        try:
            self._process = await asyncio.create_subprocess_exec(
                *command, cwd=workdir, env={**env, "PORT": str(self.port)}, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
                **with_user_umask())
        except OSError as exc:
            raise HandlerError(f"cannot run {command[0]!r} in {workdir}: {exc.strerror}", status=500) from exc
        self.pid = self._process.pid
        self._watch(self._copy(self._process.stdout, "stdout", logs))
        self._watch(self._copy(self._process.stderr, "stderr", logs))
        self._watch(self._wait_exit())

    def _watch(self, coroutine) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _copy(self, stream: asyncio.StreamReader | None, name: str, logs: LogStore) -> None:
        assert stream is not None
        async for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.output.append(line)
            logs.write(self.function, self.name, name, line)

    async def _wait_exit(self) -> None:
        assert self._process is not None
        code = await self._process.wait()
        await self._client.aclose()
        self.closed(self.exit_reason or describe_exit(code if code >= 0 else None, -code if code < 0 else None))

    async def wait_until_serving(self, timeout: float) -> None:
        """Poll until the program accepts connections (and /healthz, if any, is not failing)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and self._process is not None and self._process.returncode is None:
            try:
                response = await self._client.get(self.url + "healthz", timeout=1)
                if response.status_code < 500:
                    self.mark_ready()
                    return
            except self._transport_error:
                pass
            await asyncio.sleep(READY_POLL)
        if self._process is not None and self._process.returncode is not None:
            code = self._process.returncode
            raise HandlerError(f"{self.name} {describe_exit(code if code >= 0 else None, -code if code < 0 else None)} "
                               f"before it served on port {self.port}")
        await self.wait_ready(0)  # raises if it did not become ready in time

    async def last_output(self, timeout: float = 1.0) -> list[str]:
        if self._process is not None and self._process.returncode is not None and self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)  # what it wrote before it exited
        return list(self.output)

    async def invoke(self, event: Event) -> Result:
        headers, body = write_structured(event) if self.structured else write_binary(event)
        try:
            response = await self._client.post(self.url, headers={**hop_headers(event), **headers}, content=body)
        except self._transport_error as exc:
            raise HandlerError(f"replica {self.name} on port {self.port}: {exc or type(exc).__name__}",
                               status=503) from exc
        return outcome(self.url, response.status_code, response.headers, response.content)

    def _request_stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            try:
                os.killpg(self._process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _disconnect(self) -> None:
        pass  # the process exit ends everything (see _wait_exit)

    def _fail_calls(self, error: HandlerError) -> None:
        pass  # in-flight POSTs fail on their own when the connection drops
