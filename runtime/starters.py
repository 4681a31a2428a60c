"""How a runner pool gets new replicas of its function: one starter per kind of function."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from fmesh.runtime.command_replica import CommandReplica
from fmesh.runtime.hub import ReplicaHub
from fmesh.runtime.launcher import Launcher
from fmesh.runtime.logs import LogStore
from fmesh.runtime.python_replica import PythonReplica
from fmesh.runtime.replica import Replica
from fmesh.runtime.worker import WorkerSpec

MakeSpec = Callable[[str], WorkerSpec]   # replica id → how to start a Python worker


class ReplicaStarter(Protocol):
    def create(self, index: int) -> Replica:
        """A new replica in the STARTING state (no process yet)."""

    async def start(self, replica: Replica, timeout: float) -> None:
        """Start its process and return once it is ready; HandlerError otherwise."""

    def forget(self, replica: Replica) -> None:
        """The replica is gone for good."""


class PythonStarter:
    """Python handlers: a worker forked from the function's template or the zygote (or a
    fresh interpreter). `use_template`: replicas that serve; a deploy's one-off check
    goes without, so a function that never gets an event costs no template."""

    def __init__(self, function: str, hub: ReplicaHub, launcher: Launcher, make_spec: MakeSpec,
                 use_template: bool = False, version: str = "") -> None:
        self.function = function
        self.version = version
        self.hub = hub
        self.launcher = launcher
        self.make_spec = make_spec
        self.template = function if use_template else None

    def create(self, index: int) -> Replica:
        replica = PythonReplica(secrets.token_hex(8), self.function, index, self.version)
        self.hub.expect(replica)
        return replica

    async def start(self, replica: Replica, timeout: float) -> None:
        replica.pid = await self.launcher.launch(self.make_spec(replica.id), self.template)
        await replica.wait_ready(timeout)

    def forget(self, replica: Replica) -> None:
        self.hub.forget(replica)


class CommandStarter:
    """Any program that serves the CloudEvents HTTP binding on $PORT."""

    def __init__(self, function: str, command: list[str], workdir: Path, environment: Callable[[], dict[str, str]],
                 logs: LogStore, structured: bool = False, version: str = "") -> None:
        self.function = function
        self.version = version
        self.command = command
        self.workdir = workdir
        self.environment = environment  # read at each start: secrets may have rotated
        self.logs = logs
        self.structured = structured

    def create(self, index: int) -> Replica:
        return CommandReplica(secrets.token_hex(8), self.function, index, free_port(), self.structured,
                              version=self.version)

    async def start(self, replica: Replica, timeout: float) -> None:
        assert isinstance(replica, CommandReplica)
        await replica.launch(self.command, self.workdir, self.environment(), self.logs)
        await replica.wait_until_serving(timeout)

    def forget(self, replica: Replica) -> None:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
