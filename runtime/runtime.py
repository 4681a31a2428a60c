"""The function runtime of a mesh node: every function's runner pool and sidecar.

It owns the replica socket, the zygote and the function logs, and turns a
`FunctionSpec` into a running (or scaled-to-zero) function.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fmesh.contracts import DeliveryQueue, Publisher
from fmesh.runtime.hub import ReplicaHub
from fmesh.runtime.launcher import Launcher, SubprocessLauncher, ZygoteLauncher
from fmesh.runtime.logs import LogStore
from fmesh.runtime.policy import DeliveryPolicy, ScalePolicy
from fmesh.runtime.pool import PoolStatus, RunnerPool
from fmesh.runtime.replica import Replica
from fmesh.runtime.sidecar import DeliveryStats, Sidecar
from fmesh.runtime.worker import WorkerSpec

# What a replica inherits from the mesh's environment; everything else must be declared.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")


@dataclass(frozen=True)
class FunctionSpec:
    """A deployable function, as the runtime needs it (the manifest maps onto this)."""

    name: str
    directory: Path                      # the function's code, as deployed
    handler: str                         # "handler.py:handle", relative to `directory`
    env: dict[str, str] = field(default_factory=dict)
    scale: ScalePolicy = ScalePolicy()
    delivery: DeliveryPolicy = DeliveryPolicy()
    version: str = ""

    @property
    def subscription(self) -> str:
        return subscription_name(self.name)


def subscription_name(function: str) -> str:
    return f"function:{function}"


@dataclass
class FunctionStatus:
    name: str
    version: str
    pool: PoolStatus
    delivery: DeliveryStats


@dataclass
class _Running:
    spec: FunctionSpec
    pool: RunnerPool
    sidecar: Sidecar


class Runtime:
    def __init__(self, data_dir: Path, run_dir: Path, publisher: Publisher, launcher: str = "zygote") -> None:
        self.logs = LogStore(data_dir / "logs")
        self.publisher = publisher
        self.hub = ReplicaHub(run_dir / "replicas.sock", self._on_log)
        self.launcher: Launcher = (
            ZygoteLauncher(self._on_exit, self._on_zygote_output) if launcher == "zygote"
            else SubprocessLauncher(self._on_exit))
        self.functions: dict[str, _Running] = {}

    async def start(self) -> None:
        await self.hub.start()
        await self.launcher.start()

    async def stop(self) -> None:
        await asyncio.gather(*(self.remove(name, forget_logs=False) for name in list(self.functions)))
        await self.launcher.stop()
        await self.hub.stop()
        self.logs.close()

    async def deploy(self, spec: FunctionSpec, queue: DeliveryQueue) -> None:
        """Run `spec`, replacing the running version of the same function if any."""
        if spec.name in self.functions:
            await self.remove(spec.name, forget_logs=False)
        pool = RunnerPool(spec.name, lambda rid: self._worker_spec(spec, rid), self.launcher, self.hub,
                          spec.scale, lambda text: self.logs.note(spec.name, text))
        sidecar = Sidecar(spec.subscription, f"/fmesh/functions/{spec.name}", queue, pool, self.publisher,
                          spec.delivery, spec.scale.max_inflight)
        self.functions[spec.name] = _Running(spec, pool, sidecar)
        pool.start()
        sidecar.start()

    async def remove(self, name: str, forget_logs: bool = True) -> None:
        running = self.functions.pop(name, None)
        if running is None:
            return
        await running.sidecar.stop()
        await running.pool.shutdown()
        if forget_logs:
            self.logs.forget(name)

    def status(self) -> list[FunctionStatus]:
        return [FunctionStatus(name, r.spec.version, r.pool.status(), r.sidecar.stats)
                for name, r in sorted(self.functions.items())]

    def _worker_spec(self, spec: FunctionSpec, replica_id: str) -> WorkerSpec:
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        env.update(spec.env)
        env.update(FMESH_FUNCTION=spec.name, FMESH_VERSION=spec.version, PYTHONUNBUFFERED="1")
        return WorkerSpec(socket=str(self.hub.socket_path), replica=replica_id, directory=str(spec.directory),
                          handler=spec.handler, concurrency=spec.scale.concurrency, env=env,
                          sys_path=[p for p in sys.path if p])

    def _on_log(self, replica: Replica, stream: str, line: str) -> None:
        self.logs.write(replica.function, replica.name, stream, line)

    def _on_exit(self, replica_id: str, how: str) -> None:
        for running in self.functions.values():
            running.pool.on_exit(replica_id, how)

    def _on_zygote_output(self, line: str) -> None:
        print(f"zygote: {line}", file=sys.stderr)
