"""The function runtime of a mesh node: every function's runner pool and sidecar.

It owns the replica socket, the zygote and the function logs, turns a `FunctionSpec`
into a running (or scaled-to-zero) function, and replaces a running version safely:
the new version starts taking events first, the old one finishes what it has, then
stops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fmesh.runtime.hub import ReplicaHub
from fmesh.runtime.launcher import Launcher, SubprocessLauncher, ZygoteLauncher, inherited_env
from fmesh.runtime.logs import LogStore
from fmesh.runtime.policy import DeliveryPolicy, ScalePolicy
from fmesh.runtime.pool import PoolStatus, RunnerPool
from fmesh.runtime.python_replica import PythonReplica
from fmesh.runtime.replica import NotSent, Replica, State, replica_name
from fmesh.runtime.secrets import SecretSource, resolve_secrets
from fmesh.runtime.sidecar import DeliveryStats, Sidecar
from fmesh.runtime.sinks import Sink, open_sink
from fmesh.runtime.sinks.bridge import BridgeAuth, BridgeSink, BridgeStats
from fmesh.runtime.starters import CommandStarter, PythonStarter, ReplicaStarter
from fmesh.runtime.worker import WorkerSpec

from fmesh import meshlog
from fmesh.contracts import DeliveryQueue, Observer, Publisher
from fmesh.errors import HandlerError, InvalidEvent
from fmesh.events import Event
from fmesh.tracing import CLIENT, NOOP, Tracer

log = meshlog.get("fmesh.runtime")


@dataclass(frozen=True)
class FunctionSpec:
    """A deployable function, as the runtime needs it (the manifest maps onto this)."""

    name: str
    directory: Path                      # the function's code, as deployed
    handler: str | None = None           # "handler.py:handle", relative to `directory`
    command: tuple[str, ...] = ()        # or any program serving CloudEvents over HTTP on $PORT
    workdir: str = "."                   # the command's folder, relative to `directory`
    env: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, SecretSource] = field(default_factory=dict)
    scale: ScalePolicy = ScalePolicy()
    delivery: DeliveryPolicy = DeliveryPolicy()
    memory_bytes: int | None = None      # address-space cap of a Python replica
    structured: bool = False             # command functions: structured instead of binary mode
    site_packages: Path | None = None    # the function's own requirements, installed
    fresh_interpreter: bool = False      # its requirements clash with what the zygote preloads
    version: str = ""

    @property
    def subscription(self) -> str:
        return subscription_name(self.name)


def subscription_name(function: str) -> str:
    return f"function:{function}"


@dataclass(frozen=True)
class SinkSpec:
    """A subscription whose target is a URL or sink: `subscription:<name>`, a function's
    `reply:<name>`, or an owner's `deadletter:<name>`."""

    subscription: str
    url: str
    options: dict = field(default_factory=dict)     # SinkOptions fields
    delivery: DeliveryPolicy = DeliveryPolicy()
    max_inflight: int = 32
    source: str = ""                                # the `source` of replies the sink answers with
    bridge: BridgeAuth | None = None                # set: the URL is another mesh, reached as a bridge


@dataclass
class SinkStatus:
    name: str
    url: str
    delivery: DeliveryStats
    bridge: BridgeStats | None = None


@dataclass
class FunctionStatus:
    name: str
    version: str
    pool: PoolStatus
    delivery: DeliveryStats
    out_of_memory: int = 0
    retiring: int = 0


@dataclass
class _Running:
    spec: FunctionSpec
    pool: RunnerPool
    sidecar: Sidecar


class Runtime:
    def __init__(self, data_dir: Path, run_dir: Path, publisher: Publisher, launcher: str = "zygote",
                 mesh_id: str = "", template_idle: float = 300.0, zygote_idle: float = 0.0) -> None:
        self.mesh_id = mesh_id
        self.tracer: Tracer = NOOP       # the spans of deliveries (the node installs an exporting one)
        self.logs = LogStore(data_dir / "logs")
        self.publisher = publisher
        self.hub = ReplicaHub(run_dir / "replicas.sock", self._on_log)
        self.zygote = ZygoteLauncher(self._on_exit, self._on_zygote_output, template_idle=template_idle,
                                     zygote_idle=zygote_idle, on_idle=self._on_zygote_idle)
        self.fresh = SubprocessLauncher(self._on_exit)
        self.default_launcher: Launcher = self.zygote if launcher == "zygote" else self.fresh
        self.functions: dict[str, _Running] = {}
        self.max_reply_bytes: int | None = None   # the mesh's event limit, for what sinks answer
        self.observers: list[Observer] = []   # every sidecar tells them what its attempts came to
        self.cold_start_listeners: list[Callable[[str, float], None]] = []   # (function, seconds)
        self.sinks: dict[str, tuple[SinkSpec, Sink, Sidecar]] = {}
        self._retiring: dict[str, set[asyncio.Task]] = {}
        self._retiring_code: dict[asyncio.Task, Path] = {}   # a retiring version's task → its code's folder
        self._verifying: dict[str, Replica] = {}   # replicas started once by a deploy, by id

    async def start(self) -> None:
        await self.hub.start()
        await self.default_launcher.start()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop every function and sink within about `grace` seconds: in-flight events get most
        of it, then replicas that will not end are killed. Unfinished events stay stored."""
        deadline = time.monotonic() + grace
        running = list(self.functions.values())
        self.functions.clear()
        await asyncio.gather(*(r.sidecar.stop(grace * 0.6) for r in running))
        await asyncio.gather(*(r.pool.shutdown(_left(deadline, 0.5)) for r in running))
        await asyncio.gather(*(self.remove_sink(name, _left(deadline, 0.5)) for name in list(self.sinks)))
        retiring = {t for tasks in self._retiring.values() for t in tasks}
        if retiring:
            _, late = await asyncio.wait(retiring, timeout=_left(deadline))
            for task in late:
                task.cancel()
        await self.zygote.stop()
        await self.fresh.stop()
        await self.hub.stop()
        self.logs.close()

    async def deploy(self, spec: FunctionSpec, queue: DeliveryQueue, replies: Publisher | None = None) -> None:
        """Run `spec`; a running older version keeps its in-flight events until they finish.

        Replies go to `replies` (a sink's queue) when given, else back into the mesh."""
        old = self.functions.get(spec.name)
        if old is not None and old.spec.version != spec.version:
            self.zygote.forget(spec.name)  # the old version's template goes with its last replica
        starter = self._starter(spec, use_template=True)
        pool = RunnerPool(spec.name, starter, spec.scale, lambda text: self.logs.note(spec.name, text),
                          self._cold_started)
        sidecar = Sidecar(spec.subscription, f"/fmesh/functions/{spec.name}", queue, pool,
                          replies or self.publisher, spec.delivery, spec.scale.max_inflight, self.observers,
                          tracer=self.tracer)
        self.functions[spec.name] = _Running(spec, pool, sidecar)
        pool.start()
        sidecar.start()
        if old is not None:
            self.logs.note(spec.name, f"version {spec.version} deployed; version {old.spec.version} "
                                      "finishes its in-flight events, then stops")
            task = asyncio.get_running_loop().create_task(self._retire(old))
            self._retiring.setdefault(spec.name, set()).add(task)
            self._retiring_code[task] = old.spec.directory
            task.add_done_callback(self._retiring[spec.name].discard)
            task.add_done_callback(lambda done: self._retiring_code.pop(done, None))

    async def invoke(self, name: str, event: Event) -> Event | None:
        """One attempt at `event` by function `name`, straight to its runner pool (a replica
        started if none runs, the function's timeout), no retries; the reply as the mesh
        would publish it, not published. KeyError when the function does not run here."""
        running = self.functions[name]
        result = await running.pool.invoke(event, running.spec.delivery.timeout)
        if result is None or isinstance(result, NotSent):
            return None
        try:
            return running.sidecar.reply_event(event, result)
        except InvalidEvent as exc:
            raise HandlerError(f"the handler returned an invalid event: {exc}", retryable=False) from exc

    def _cold_started(self, function: str, seconds: float) -> None:
        for listener in self.cold_start_listeners:
            listener(function, seconds)

    async def verify(self, spec: FunctionSpec) -> None:
        """Start one replica of `spec` as it would run, then stop it: a handler that cannot
        load, or a program that does not serve, fails here (HandlerError saying why)
        instead of after it has replaced a working version."""
        starter = self._starter(spec)
        replica = starter.create(0)
        replica.name = replica_name(spec.name, spec.version, "verify")
        self._verifying[replica.id] = replica
        try:
            await starter.start(replica, spec.scale.start_timeout)
        except Exception as exc:  # noqa: BLE001 - any failure to start is the answer
            raise HandlerError(await _why_not_started(replica, exc)) from None
        finally:
            del self._verifying[replica.id]
            await _discard(replica)
            starter.forget(replica)
            if spec.name not in self.functions:
                self.logs.forget(spec.name)  # a function that never ran keeps no logs

    async def _retire(self, old: _Running) -> None:
        await old.sidecar.stop(grace=old.spec.delivery.timeout + 5)
        await old.pool.shutdown()

    async def remove(self, name: str, forget_logs: bool = True) -> None:
        running = self.functions.pop(name, None)
        if running is None:
            return
        await running.sidecar.stop()
        await running.pool.shutdown()
        self.zygote.forget(name)
        if forget_logs:
            self.logs.forget(name)

    def open_sink(self, spec: SinkSpec) -> Sink:
        """The sink `spec` describes, not started; raises (TriggerConfigError, ValueError)
        when it cannot be built as given (a missing secret, an unreadable CA file)."""
        sink = open_sink(spec.url, spec.options, self.max_reply_bytes)
        if spec.bridge is not None:
            sink = BridgeSink(sink, self.mesh_id, spec.bridge)  # type: ignore[arg-type]
        return sink

    async def deploy_sink(self, spec: SinkSpec, queue: DeliveryQueue, sink: Sink | None = None) -> None:
        """Deliver `spec.subscription`'s events to its URL; replaces one running already."""
        sink = sink or self.open_sink(spec)
        await sink.start()
        sidecar = Sidecar(spec.subscription, spec.source or f"/fmesh/{spec.subscription}", queue, sink,
                          self.publisher, spec.delivery, spec.max_inflight, self.observers,
                          tracer=self.tracer, span_kind=CLIENT)
        await self.remove_sink(spec.subscription)
        self.sinks[spec.subscription] = (spec, sink, sidecar)
        sidecar.start()

    async def remove_sink(self, subscription: str, grace: float | None = None) -> None:
        running = self.sinks.pop(subscription, None)
        if running is not None:
            spec, sink, sidecar = running
            await sidecar.stop(grace=spec.delivery.timeout if grace is None else min(grace, spec.delivery.timeout))
            await sink.stop()

    def sink_status(self) -> list[SinkStatus]:
        return [SinkStatus(name, spec.url, sidecar.stats, getattr(sink, "stats", None))
                for name, (spec, sink, sidecar) in sorted(self.sinks.items())]

    def code_in_use(self) -> set[Path]:
        """The folders every version here runs from, those still finishing their events included."""
        return {r.spec.directory for r in self.functions.values()} | set(self._retiring_code.values())

    def status(self) -> list[FunctionStatus]:
        return [FunctionStatus(name, r.spec.version, r.pool.status(), r.sidecar.stats,
                               r.pool.out_of_memory, len(self._retiring.get(name, ())))
                for name, r in sorted(self.functions.items())]

    def _starter(self, spec: FunctionSpec, use_template: bool = False) -> ReplicaStarter:
        if spec.command:
            return CommandStarter(spec.name, list(spec.command), spec.directory / spec.workdir,
                                  lambda: self._environment(spec), self.logs, spec.structured, spec.version)
        launcher = self.fresh if spec.fresh_interpreter else self.default_launcher
        return PythonStarter(spec.name, self.hub, launcher, lambda rid: self._worker_spec(spec, rid), use_template,
                             spec.version)

    def _environment(self, spec: FunctionSpec) -> dict[str, str]:
        """Declared env and secrets, read now (so a rotated secret reaches new replicas)."""
        env = inherited_env()
        env.update(spec.env)
        env.update(resolve_secrets(spec.secrets))
        env.update(FMESH_FUNCTION=spec.name, FMESH_VERSION=spec.version, PYTHONUNBUFFERED="1")
        return env

    def _worker_spec(self, spec: FunctionSpec, replica_id: str) -> WorkerSpec:
        assert spec.handler is not None
        extra = [str(spec.site_packages)] if spec.site_packages else []
        return WorkerSpec(socket=str(self.hub.socket_path), replica=replica_id, directory=str(spec.directory),
                          handler=spec.handler, concurrency=spec.scale.concurrency,
                          env=self._environment(spec), memory_bytes=spec.memory_bytes,
                          sys_path=extra)  # the rest of sys.path a replica has already

    def _on_log(self, replica: PythonReplica, stream: str, line: str) -> None:
        replica.output.append(line)
        self.logs.write(replica.function, replica.name, stream, line)

    def _on_exit(self, replica_id: str, how: str) -> None:
        verifying = self._verifying.get(replica_id)
        if verifying is not None:
            verifying.process_exited(how)
        for running in self.functions.values():
            running.pool.on_exit(replica_id, how)

    def _on_zygote_output(self, line: str) -> None:
        log.warning(f"zygote: {line}")

    def _on_zygote_idle(self) -> None:
        log.info(f"the zygote stopped after {self.zygote.zygote_idle:g}s without a replica or template; "
                 "the next cold start starts it again")


async def _discard(replica: Replica) -> None:
    if replica.state is State.READY:
        await replica.stop(grace=2)
    else:
        replica.kill("not started")


async def _why_not_started(replica: Replica, error: Exception) -> str:
    """The error, how the process ended, and what it printed last: the lines users need.
    (A handler that failed to load has said where already: its traceback is in the logs.)"""
    lines = await replica.last_output()
    message = str(error) or type(error).__name__
    if replica.exit_reason and replica.exit_reason not in message and "failed to load" not in message:
        message += f" ({replica.exit_reason})"
    if lines and "failed to load" not in message:
        message += "; its last output:\n" + "\n".join(f"  {line}" for line in lines)
    return message


def _left(deadline: float, share: float = 1.0) -> float:
    """`share` of the time left until `deadline` (a `time.monotonic()` value)."""
    return max(0.0, deadline - time.monotonic()) * share
