"""How replica processes start: forked from the zygote, or as a fresh interpreter.

Either way the new process connects back to the replica hub by itself; a launcher only
starts it, reports its pid, and reports its exit when it can see it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from typing import Protocol

from fmesh.runtime.worker import WorkerSpec

from fmesh.errors import HandlerError
from fmesh.permissions import with_user_umask

# What a replica inherits from the mesh's environment; everything else must be declared.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")


def inherited_env() -> dict[str, str]:
    """The environment a replica process (or the zygote it forks from) starts with. Only
    these few: /proc/<pid>/environ keeps what a process started with, whatever its
    os.environ becomes, and the mesh's own environment holds every function's secrets."""
    return {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}

SPAWN_TIMEOUT = 10.0                     # seconds the zygote may take to fork one replica
OnExit = Callable[[str, str], None]      # (replica id, how it ended)
OnOutput = Callable[[str], None]         # a line the launcher itself printed


class Launcher(Protocol):
    async def start(self) -> None: ...

    async def launch(self, spec: WorkerSpec, template: str | None = None) -> int:
        """Start a replica process for `spec`; returns its pid. With `template` (the
        function's name), from that function's template where the launcher has them."""

    def forget(self, function: str) -> None:
        """The function was deleted or redeployed: its templates may go."""

    async def stop(self) -> None: ...


def describe_exit(code: int | None, signal_number: int | None) -> str:
    if signal_number:
        import signal

        try:
            name = signal.Signals(signal_number).name
        except ValueError:
            name = str(signal_number)
        return f"killed by {name}"
    return f"exited with code {code}"


class SubprocessLauncher:
    """A fresh `python -m fmesh.runtime.worker` per replica: slow to start, the baseline."""

    def __init__(self, on_exit: OnExit, python: str = sys.executable) -> None:
        self.on_exit = on_exit
        self.python = python
        self._waits: set[asyncio.Task] = set()

    async def start(self) -> None:
        pass

    async def launch(self, spec: WorkerSpec, template: str | None = None) -> int:
        # The spec carries the function's env and secrets: on stdin, never on the command
        # line, which every local user can read (`ps`, /proc/*/cmdline).
        process = await asyncio.create_subprocess_exec(
            self.python, "-m", "fmesh.runtime.worker", stdin=asyncio.subprocess.PIPE, start_new_session=True,
            env=inherited_env(), **with_user_umask())
        process.stdin.write(spec.to_json().encode())  # type: ignore[union-attr]
        process.stdin.close()  # type: ignore[union-attr]
        task = asyncio.get_running_loop().create_task(self._wait(spec.replica, process))
        self._waits.add(task)
        task.add_done_callback(self._waits.discard)
        return process.pid

    def forget(self, function: str) -> None:
        pass

    async def _wait(self, replica: str, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        self.on_exit(replica, describe_exit(code if code >= 0 else None, -code if code < 0 else None))

    async def stop(self) -> None:
        if self._waits:  # replicas were asked to stop before this: give them a moment to exit
            _, pending = await asyncio.wait(set(self._waits), timeout=5)
            for task in pending:
                task.cancel()


class ZygoteLauncher:
    """Forks replicas from a warm process (see `fmesh.runtime.zygote`), and from each
    function's template after its first cold start: a template without a replica for
    `template_idle` seconds goes (0: no templates, every replica loads its handler). The
    zygote itself goes after `zygote_idle` seconds with no replica and no template (0:
    never), and the next launch starts another: an idle mesh holds no zygote's memory."""

    def __init__(self, on_exit: OnExit, on_output: OnOutput, python: str = sys.executable,
                 template_idle: float = 300.0, zygote_idle: float = 0.0, on_idle: Callable[[], None] | None = None,
                 ) -> None:
        self.on_exit = on_exit
        self.on_output = on_output
        self.on_idle = on_idle or (lambda: None)  # told when an idle zygote was let go
        self.python = python
        self.template_idle = template_idle
        self.zygote_idle = zygote_idle
        self._process: asyncio.subprocess.Process | None = None
        self._spawns: dict[str, asyncio.Future[int]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._lock = asyncio.Lock()
        self.preloaded: frozenset[str] = frozenset()  # top-level modules every fork already has

    async def start(self) -> None:
        async with self._lock:
            if self._process is None or self._process.returncode is not None:
                await self._start_zygote()

    async def _start_zygote(self) -> None:
        process = await asyncio.create_subprocess_exec(
            self.python, "-m", "fmesh.runtime.zygote", "--idle", str(self.zygote_idle),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True, env=inherited_env(),
            **with_user_umask())  # the forks' umask: the user's, not the mesh's private one
        try:
            ready = await process.stdout.readline()  # type: ignore[union-attr]
        except BaseException:  # cancelled (its pool shut down): a zygote nobody would ever stop
            process.kill()
            await asyncio.shield(process.wait())
            raise
        if not ready:
            error = (await process.stderr.read()).decode(errors="replace")  # type: ignore[union-attr]
            raise HandlerError(f"the zygote failed to start: {error.strip() or 'no output'}")
        self.preloaded = frozenset(json.loads(ready).get("modules", []))
        self._process = process
        for coroutine in (self._read_reports(process), self._read_errors(process)):
            task = asyncio.get_running_loop().create_task(coroutine)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def launch(self, spec: WorkerSpec, template: str | None = None) -> int:
        await self.start()
        spawned: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._spawns[spec.replica] = spawned
        request: dict = {"op": "spawn", "spec": json.loads(spec.to_json())}
        if template is not None and self.template_idle > 0:
            request["template"] = {"function": template, "idle": self.template_idle}
        self._request(request)
        try:
            return await asyncio.wait_for(spawned, SPAWN_TIMEOUT)
        except TimeoutError:
            raise HandlerError(f"the zygote did not fork a replica within {SPAWN_TIMEOUT:g}s") from None
        finally:
            self._spawns.pop(spec.replica, None)

    def forget(self, function: str) -> None:
        if self._process is not None and self._process.returncode is None:
            self._request({"op": "forget", "function": function})

    def _request(self, request: dict) -> None:
        self._process.stdin.write((json.dumps(request) + "\n").encode())  # type: ignore[union-attr]

    async def _read_reports(self, process: asyncio.subprocess.Process) -> None:
        async for line in process.stdout:  # type: ignore[union-attr]
            report = json.loads(line)
            if report["op"] == "spawned" and report["replica"] in self._spawns:
                future = self._spawns[report["replica"]]
                if not future.done():
                    future.set_result(report["pid"])
            elif report["op"] == "exited":
                self.on_exit(report["replica"], describe_exit(report["code"], report["signal"]))
            elif report["op"] == "idle":
                self._let_go(process)
        if self._process is not process:
            return  # let go when idle: the spawns waiting now are another zygote's
        for future in self._spawns.values():  # the zygote died: whoever waits must hear it
            if not future.done():
                future.set_exception(HandlerError("the zygote exited while forking a replica"))

    def _let_go(self, process: asyncio.subprocess.Process) -> None:
        """The zygote has had no child for `zygote_idle` seconds: close its stdin (it exits),
        unless a spawn has been asked of it since it said so (then it is told to stay, and
        says so again when idle again). No await between the check and the close, so no
        launch can slip in."""
        if self._process is not process:
            return
        if self._spawns or self._lock.locked():
            self._request({"op": "stay"})
            return
        self._process = None
        process.stdin.close()  # type: ignore[union-attr]
        ended = asyncio.get_running_loop().create_task(process.wait())
        self._tasks.add(ended)
        ended.add_done_callback(self._tasks.discard)
        self.on_idle()

    async def _read_errors(self, process: asyncio.subprocess.Process) -> None:
        async for line in process.stderr:  # type: ignore[union-attr]
            self.on_output(line.decode(errors="replace").rstrip("\n"))

    async def stop(self) -> None:
        # A zygote being started now is stopped too, not left behind (within reason: one that
        # never gets ready must not hold up the mesh's shutdown).
        try:
            await asyncio.wait_for(self._lock.acquire(), 5)
        except TimeoutError:
            pass
        else:
            self._lock.release()
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.stdin.close()  # type: ignore[union-attr]
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        for task in list(self._tasks):
            task.cancel()
