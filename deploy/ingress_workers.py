"""The mesh's ingress workers (`fmesh up --ingress-workers N`): N processes serving its
port, started with its listening sockets once the mesh is up, each replaced when it
exits, and stopped before the mesh stops (so that what they took is answered).

Why processes: at full load the mesh's one event loop spends most of its time on HTTP
and on parsing CloudEvents; both run in the workers, on other cores, and the mesh keeps
what needs its state: who may send, the store, routing and delivery (see
deploy/ingress_link.py and broker/ingress_front.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from fmesh.runtime.launcher import inherited_env

from fmesh import meshlog
from fmesh.settings import NodeSettings, settings_document

log = meshlog.get("fmesh.deploy")
RESTART_PAUSE = 1.0   # seconds at least between two starts of one worker: a worker that cannot start is not a busy loop


def worker_env() -> dict[str, str]:
    """What a replica inherits and where Python finds fmesh: the mesh's own environment
    holds the functions' secrets, and /proc/<pid>/environ would show them."""
    return {**inherited_env(), **{name: os.environ[name] for name in ("PYTHONPATH",) if name in os.environ}}


class IngressWorkers:
    def __init__(self, settings: NodeSettings, sockets: list[socket.socket], link: Path, mesh_http: Path) -> None:
        self.count = settings.ingress_workers
        self.sockets = sockets
        self.options: dict[str, Any] = {"settings": settings_document(settings), "link": str(link),
                                        "mesh_http": str(mesh_http),
                                        "workers": self.count, "sockets": [s.fileno() for s in sockets]}
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = False
        self._watchers: list[asyncio.Task] = []

    def is_worker(self, pid: int) -> bool:
        return any(process.pid == pid for process in self.processes.values())

    async def start(self, max_event_bytes: int) -> None:
        """Start the workers, refusing events past `max_event_bytes` (413) as the mesh does."""
        self.options["max_event_bytes"] = max_event_bytes
        for slot in range(self.count):
            self._watchers.append(asyncio.create_task(self._keep(slot), name=f"ingress worker {slot + 1}"))

    async def _keep(self, slot: int) -> None:
        """Run worker `slot`, and again when it exits, until the workers stop."""
        while not self._stopping:
            started = time.monotonic()
            try:
                process = await self._spawn()
            except OSError as exc:
                log.error(f"cannot start ingress worker {slot + 1}: {exc}")
            else:
                self.processes[slot] = process
                code = await process.wait()
                if self._stopping:
                    return
                log.warning(f"ingress worker {slot + 1} (pid {process.pid}) exited with code {code}: starting another")
            await asyncio.sleep(max(0.0, RESTART_PAUSE - (time.monotonic() - started)))

    async def _spawn(self) -> asyncio.subprocess.Process:
        read_end, write_end = os.pipe()
        try:
            os.write(write_end, json.dumps(self.options).encode())  # far below what a pipe buffers
        finally:
            os.close(write_end)
        try:
            return await asyncio.create_subprocess_exec(
                sys.executable, "-m", "fmesh.deploy.ingress_worker", "--options-fd", str(read_end),
                pass_fds=(read_end, *self.options["sockets"]), env=worker_env())
        finally:
            os.close(read_end)

    async def stop(self, timeout: float) -> None:
        """Stop every worker (each finishes what it took) within `timeout`, then kill what is left."""
        self._stopping = True
        running = [p for p in self.processes.values() if p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if running:
            await asyncio.wait([asyncio.create_task(p.wait()) for p in running], timeout=timeout)
            for process in running:
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
        for watcher in self._watchers:
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
