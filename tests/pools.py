"""A runner-pool harness for tests: a real replica hub, a real zygote (or fresh
interpreters) and pools of fixture functions, without a mesh around them."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from fmesh.runtime.hub import ReplicaHub
from fmesh.runtime.launcher import SubprocessLauncher, ZygoteLauncher
from fmesh.runtime.logs import LogStore
from fmesh.runtime.policy import ScalePolicy
from fmesh.runtime.pool import RunnerPool
from fmesh.runtime.starters import PythonStarter
from fmesh.runtime.worker import WorkerSpec
from support import FIXTURES

FUNCTIONS = FIXTURES / "functions"


class Harness:
    """`kind`: "template" (forked from the function's template, as a mesh's pools are),
    "zygote" (forked from the zygote, loading the handler) or "subprocess" (fresh)."""

    def __init__(self, tmp_path: Path, kind: str, template_idle: float = 300.0, zygote_idle: float = 0.0) -> None:
        self.run_dir = Path(tempfile.mkdtemp(prefix="fm-"))
        self.logs = LogStore(tmp_path / "logs")
        self.hub = ReplicaHub(self.run_dir / "r.sock", lambda r, s, line: self.logs.write(r.function, r.name, s, line))
        self.pools: list[RunnerPool] = []
        self.exits: list[tuple[str, str]] = []  # (replica id, how it ended), as the launcher told it
        self.zygotes_let_go = 0
        on_exit = lambda rid, how: [self.exits.append((rid, how)), *(p.on_exit(rid, how) for p in self.pools)]  # noqa: E731
        self.launcher = (SubprocessLauncher(on_exit) if kind == "subprocess"
                         else ZygoteLauncher(on_exit, lambda line: None, template_idle=template_idle,
                                             zygote_idle=zygote_idle, on_idle=self._let_go))
        self.use_template = kind == "template"

    def _let_go(self) -> None:
        self.zygotes_let_go += 1

    async def start(self) -> None:
        await self.hub.start()
        await self.launcher.start()

    def pool(self, fixture: str, scale: ScalePolicy, handler: str = "handler.py:handle", env=None,
             memory_bytes=None, name: str | None = None) -> RunnerPool:
        def spec(rid: str) -> WorkerSpec:
            return WorkerSpec(str(self.hub.socket_path), rid, str(FUNCTIONS / fixture), handler,
                              scale.concurrency, env={"PATH": "/usr/bin:/bin", **(env or {})},
                              memory_bytes=memory_bytes)
        name = name or fixture
        starter = PythonStarter(name, self.hub, self.launcher, spec, use_template=self.use_template)
        pool = RunnerPool(name, starter, scale, lambda t: self.logs.note(name, t))
        self.pools.append(pool)
        pool.start()
        return pool

    async def stop(self) -> None:
        for pool in self.pools:
            await pool.shutdown(grace=2)
        await self.launcher.stop()
        await self.hub.stop()
        self.logs.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)  # mkdtemp's: pytest's tmp_path would be too long a socket path


async def eventually(condition, timeout: float = 10.0, message: str = "condition"):
    """Poll `condition` without blocking the event loop; fail after `timeout` seconds."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(0.05)
    return value


def alive(pid: int) -> bool:
    """Whether `pid` is a running process (a zombie waiting for its parent is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def process_tree(pid: int) -> set[int]:
    """`pid` and every process below it (children of children...)."""
    found = {pid}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found.update(*(process_tree(int(child)) for child in (task / "children").read_text().split()))
        except OSError:
            pass
    return found


def zygotes(parent: int) -> set[int]:
    """The zygotes `parent` started: its children running fmesh.runtime.zygote (whatever a
    zygote forks has that command line too, but is not `parent`'s child)."""
    found = set()
    for task in Path(f"/proc/{parent}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue  # a thread (the test's own executor's, say) that has just ended
        for pid in children:
            try:
                if b"fmesh.runtime.zygote" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.add(int(pid))
            except OSError:
                pass  # it has just exited
    return found
