"""The zygote: the process that forks Python replicas in milliseconds.

It starts once per mesh, imports the worker and the libraries handlers commonly use,
then waits for requests (JSON lines on stdin). A `spawn` forks a replica. With a
`template`, it comes from that function's template (`fmesh.runtime.template`): a
process that has loaded the function's handler once and forks replicas that only have
to connect to the mesh. The first spawn for a function (or for a new version, or new
env or secrets: whatever changes the spec but the replica id) is forked from here, and
forks the template off itself once it has loaded the handler. Without a template the
zygote forks a replica that loads the handler itself (a deploy's check does that, so
idle functions cost no template).

A template goes once its function has had no replica for the template's `idle`
seconds, and once its replicas are gone after a newer template of its function was
made or the function was forgotten (deleted or redeployed). The zygote reports each
replica's pid when forked and its exit status when it ends (JSON lines on stdout),
because only a parent can wait for its children: a template tells the zygote about
its own, and the zygote is the subreaper of all of them, so a template whose first
replica has gone, and a replica whose template has gone, are the zygote's to wait for.

    → {"op": "spawn", "spec": {...WorkerSpec...}, "template": {"function": "f", "idle": 300} | absent}
    → {"op": "forget", "function": "f"}
    → {"op": "stay"}
    ← {"op": "spawned", "replica": "...", "pid": 123}
    ← {"op": "exited", "replica": "...", "pid": 123, "code": 0 | null, "signal": 9 | null}
    ← {"op": "idle"}

With `--idle SECONDS`, a zygote that has had no child at all (no replica, no template)
for that long says `idle`; the mesh then closes its stdin, unless a spawn is on its way
(it says `stay`, and the idle clock starts again), and starts a new zygote at the next
cold start. So a mesh whose functions all sit at zero holds no zygote either.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import selectors
import socket
import sys
import time
from dataclasses import dataclass, field

from fmesh.runtime import forking, template, worker  # preloaded: this is what makes forks warm
from fmesh.runtime.forking import ChildWatch, Lines, detach, exited, run_child, send

# What handlers commonly import, loaded once here instead of in every replica.
PRELOAD = ("asyncio", "json", "concurrent.futures", "pydantic", "cloudevents.core.v1.event",
           "cloudevents.core.bindings.http")


def preload() -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    warm_pydantic()


def warm_pydantic() -> None:
    """pydantic imports most of itself lazily, on the first model: make that happen here."""
    try:
        from pydantic import BaseModel
    except ImportError:
        return

    class Warm(BaseModel):
        text: str = ""
        number: int = 0
        items: list[str] = []

    Warm.model_validate({"text": "x", "items": ["y"]}).model_dump_json()


def emit(message: dict) -> None:
    send(1, message)


def template_key(spec: dict) -> str:
    """Replicas with the same spec but their id can share a template."""
    return hashlib.sha256(json.dumps({k: v for k, v in spec.items() if k != "replica"},
                                     sort_keys=True).encode()).hexdigest()


@dataclass(eq=False)
class Template:
    """The zygote's view of one function template process."""

    function: str
    key: str
    idle: float                    # seconds without a replica before it goes
    channel: int                   # the zygote's end of the socket to it (and to its first replica)
    ready: bool = False            # its first replica has loaded the handler and forked it
    superseded: bool = False       # a newer template of its function exists, or it was forgotten
    pending: dict[str, dict] = field(default_factory=dict)   # replica → spec: asked for, not forked yet
    live: set[int] = field(default_factory=set)              # pids of its replicas, the first included
    idle_since: float | None = None

    def __post_init__(self) -> None:
        self.lines = Lines(self.channel)

    def idle_for(self) -> float:
        return 0.0 if self.superseded else self.idle


class Zygote:
    def __init__(self, idle: float = 0.0) -> None:
        self.idle = idle                             # seconds without a child before saying idle (0: never)
        self.childless_since: float | None = None
        self.said_idle = False
        self.replicas: dict[int, str] = {}          # pid → replica id, whoever forked it
        self.templates: dict[str, Template] = {}    # key → template
        self.unusable: dict[str, str] = {}          # key → function: handlers no template can hold
        self.watch = ChildWatch()
        self.mesh = Lines(0)
        self.selector = selectors.DefaultSelector()
        self.selector.register(0, selectors.EVENT_READ, self.mesh)
        self.selector.register(self.watch.fd, selectors.EVENT_READ, self.watch)

    def run(self) -> None:
        # Which top-level modules a forked replica gets for free, so the mesh can tell
        # whether a function's own packages would clash with them.
        emit({"op": "ready", "pid": os.getpid(), "modules": sorted({m.split(".")[0] for m in sys.modules})})
        self.say_if_idle(time.monotonic())  # starts the idle clock: nothing may ever be asked of us
        while True:
            for key, _ in self.selector.select(self.next_deadline()):
                if key.data is self.mesh:
                    requests = self.mesh.read()
                    if requests is None:  # the mesh closed our stdin: it is gone, and so are we
                        return            # (templates see their sockets close, replicas the mesh's)
                    for request in requests:
                        self.on_request(request)
                elif isinstance(key.data, Template):
                    self.on_template(key.data)
            self.reap()
            now = time.monotonic()
            self.retire_idle(now)
            self.say_if_idle(now)

    def on_request(self, request: dict) -> None:
        if request.get("op") == "spawn":
            self.said_idle = False  # the mesh still wants us: say it again when idle again
            wanted = request.get("template")
            if wanted:
                self.spawn_from_template(request["spec"], wanted["function"], float(wanted["idle"]))
            else:
                self.spawn(request["spec"])
        elif request.get("op") == "forget":
            self.supersede(request["function"])
        elif request.get("op") == "stay":
            self.said_idle, self.childless_since = False, None

    # -- forking ---------------------------------------------------------------------------

    def spawn(self, spec: dict) -> None:
        """A replica forked from here, loading its handler itself."""
        pid = os.fork()
        if pid == 0:
            detach()
            run_child(lambda: worker.run(worker.WorkerSpec(**spec)))
        self.replicas[pid] = spec["replica"]
        emit({"op": "spawned", "replica": spec["replica"], "pid": pid})

    def spawn_from_template(self, spec: dict, function: str, idle: float) -> None:
        key = template_key(spec)
        if key in self.unusable:
            self.spawn(spec)
            return
        existing = self.templates.get(key)
        if existing is None:
            self.supersede(function)
            self.start_template(spec, function, key, idle)
            return
        existing.pending[spec["replica"]] = spec
        try:
            send(existing.channel, {"op": "spawn", "spec": spec})
        except OSError:  # it has just ended (we have not read its end yet)
            self.gone(existing)

    def start_template(self, spec: dict, function: str, key: str, idle: float) -> None:
        """Fork the function's first replica, which forks the template once it has loaded the handler."""
        ours, theirs = (s.detach() for s in socket.socketpair())
        pid = os.fork()
        if pid == 0:
            channel = detach(keep=theirs)
            run_child(lambda: template.run(worker.WorkerSpec(**spec), channel))  # type: ignore[arg-type]
        os.close(theirs)
        made = Template(function, key, idle, ours, live={pid})
        self.templates[key] = made
        self.selector.register(ours, selectors.EVENT_READ, made)
        self.replicas[pid] = spec["replica"]
        emit({"op": "spawned", "replica": spec["replica"], "pid": pid})

    # -- what templates report ---------------------------------------------------------------

    def on_template(self, made: Template) -> None:
        reports = made.lines.read()
        if reports is None:
            self.gone(made)
            return
        for report in reports:
            if report["op"] == "ready":
                made.ready = True
            elif report["op"] == "spawned":
                made.pending.pop(report["replica"], None)
                made.live.add(report["pid"])
                self.replicas[report["pid"]] = report["replica"]
                emit(report)
            elif report["op"] == "exited":
                made.live.discard(report["pid"])
                if self.replicas.pop(report["pid"], None) is not None:
                    emit(report)
            elif report["op"] == "unusable":
                self.unusable[made.key] = made.function

    def gone(self, made: Template) -> None:
        """It has ended, or never was (its first replica could not load the handler, or the
        handler cannot have one): what it was asked for and did not fork, we fork."""
        self.close(made)
        for spec in made.pending.values():
            self.spawn(spec)
        made.pending.clear()

    def close(self, made: Template) -> None:
        """Close our end of its channel: a template that reads the end exits."""
        if self.templates.get(made.key) is made:
            del self.templates[made.key]
        self.selector.unregister(made.channel)
        os.close(made.channel)

    # -- lifetimes ---------------------------------------------------------------------------

    def supersede(self, function: str) -> None:
        """The function's templates go once their replicas are gone (a new one is coming)."""
        for made in self.templates.values():
            if made.function == function:
                made.superseded = True
        self.unusable = {key: name for key, name in self.unusable.items() if name != function}

    def retire_idle(self, now: float) -> None:
        for made in list(self.templates.values()):
            if not made.ready or made.pending or made.live:
                made.idle_since = None
                continue
            made.idle_since = made.idle_since or now
            if now - made.idle_since >= made.idle_for():
                self.close(made)

    def say_if_idle(self, now: float) -> None:
        if not self.idle or self.said_idle:
            return
        if self.replicas or self.templates or has_children():
            self.childless_since = None
            return
        self.childless_since = self.childless_since or now
        if now - self.childless_since >= self.idle:
            self.said_idle = True
            emit({"op": "idle"})

    def next_deadline(self) -> float | None:
        """Seconds until the next template is due to go, or until we are idle (None: neither)."""
        due = [made.idle_since + made.idle_for() for made in self.templates.values() if made.idle_since is not None]
        if self.childless_since is not None and not self.said_idle:
            due.append(self.childless_since + self.idle)
        return max(0.0, min(due) - time.monotonic()) if due else None

    def reap(self) -> None:
        """Replicas forked here, and those whose template has gone (we are their subreaper)."""
        for pid, code, signal_number in self.watch.reaped():
            replica = self.replicas.pop(pid, None)
            if replica is not None:
                emit(exited(replica, pid, code, signal_number))
            for made in self.templates.values():
                made.live.discard(pid)  # a template's first replica is our child


def has_children() -> bool:
    """Any child process at all: a template closed here may still be on its way out. False
    where /proc cannot tell (no CONFIG_PROC_CHILDREN): the replicas and templates we know of
    still count."""
    tasks = f"/proc/{os.getpid()}/task"
    try:
        for task in os.listdir(tasks):
            with open(f"{tasks}/{task}/children") as children:
                if children.read().strip():
                    return True
    except OSError:
        return False
    return False


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m fmesh.runtime.zygote")
    parser.add_argument("--idle", type=float, default=0.0, help="say idle after this long without a child")
    idle = parser.parse_args().idle
    preload()
    forking.prctl(forking.PR_SET_CHILD_SUBREAPER, 1)
    Zygote(idle).run()


if __name__ == "__main__":
    sys.exit(main())
