"""A function's template: a process that has loaded one function's handler, once, and
forks that function's replicas from then on.

The zygote forks the function's first replica as it forks any other, with one
difference: once that replica has loaded its handler (with the function's environment,
declared env and secrets included, its working directory, memory limit and paths, and
what the import prints going to that replica's logs), it forks the template off itself
and goes on serving. The template forks every later replica, which finds the handler
module imported as a fresh interpreter would leave it (its globals its own copy: fork
copies memory) and only has to connect to the mesh. When the first replica ends, the
template is the zygote's child (the zygote is the subreaper), as are its replicas once
the template has gone.

A handler whose import leaves files open or threads running cannot be copied that way
(two replicas would share one database connection; a thread does not survive a fork):
then no template is forked, and the zygote forks the function's replicas the way it
did before templates, each loading the handler.

The first replica and the template talk with the zygote over a socket of JSON lines:

    → {"op": "ready"}             (the template's first line)
    → {"op": "unusable"}          (or the first replica's, when there is no template)
    ← {"op": "spawn", "spec": {...WorkerSpec...}}
    → {"op": "spawned", "replica": "...", "pid": 123}
    → {"op": "exited", "replica": "...", "pid": 123, "code": 0 | null, "signal": 9 | null}

and the template ends when the zygote closes the socket (or ends: the socket closes).
"""

from __future__ import annotations

import os
import selectors
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from fmesh.runtime import worker
from fmesh.runtime.forking import MAX_FD, ChildWatch, Lines, exited, run_child, send
from fmesh.runtime.worker import WorkerSpec


def run(spec: WorkerSpec, channel: int) -> None:
    """Be replica `spec`, forking the function's template once the handler is loaded."""
    worker.prepare(spec)
    before = open_fds()
    try:
        handler = worker.load_handler(spec.directory, spec.handler)
    except BaseException as exc:  # noqa: BLE001 - a failed import fails this replica, as without a template
        worker.report_load_failure(worker.connect_control(spec), exc, spec.directory)
        return
    leftovers = left_behind(before)
    if leftovers:
        print(f"fmesh: loading {spec.handler} left {leftovers}, which forked copies cannot share: each replica "
              "of this function loads it itself", file=sys.stderr, flush=True)
        send(channel, {"op": "unusable"})
    else:
        if worker.runs_a_loop(handler, spec.concurrency):
            worker.event_loop_runner()  # uvloop loaded here once, not in every replica
        fork_template(channel, handler)
    os.close(channel)
    worker.serve_loaded(worker.connect_control(spec), handler, spec.concurrency)


def fork_template(channel: int, handler: Callable[[Any], Any]) -> None:
    sys.stdout.flush()  # or what the import printed but not yet wrote goes out again from every replica
    sys.stderr.flush()
    if os.fork() == 0:
        run_child(lambda: Template(channel, handler).run())


def open_fds() -> set[int]:
    fds = set()
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else ():
        try:
            os.fstat(int(name))  # the listing's own descriptor is closed by now
        except OSError:
            continue
        fds.add(int(name))
    return fds


def left_behind(fds_before: set[int]) -> str:
    """What the handler's import left that a fork cannot copy: open files, running threads."""
    found = []
    files = len(open_fds() - fds_before)
    if files:
        found.append(f"{files} open file{'s' if files > 1 else ''}")
    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else threading.active_count()
    if threads > 1:
        found.append(f"{threads - 1} thread{'s' if threads > 2 else ''} running")
    return " and ".join(found)


class Template:
    def __init__(self, channel: int, handler: Callable[[Any], Any]) -> None:
        self.channel = channel
        self.handler = handler
        self.children: dict[int, str] = {}
        self.sigchld = signal.getsignal(signal.SIGCHLD)  # as the handler's import left it

    def run(self) -> None:
        os.setsid()  # not in the first replica's process group, which goes when that replica is killed
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):  # those streams are the first replica's
            os.dup2(devnull, fd)
        os.close(devnull)
        watch, requests = ChildWatch(), Lines(self.channel)
        selector = selectors.DefaultSelector()
        selector.register(watch.fd, selectors.EVENT_READ)
        selector.register(self.channel, selectors.EVENT_READ)
        send(self.channel, {"op": "ready"})
        while True:
            for pid, code, signal_number in watch.reaped():
                send(self.channel, exited(self.children.pop(pid, "?"), pid, code, signal_number))
            batch = requests.read() if any(key.fd == self.channel for key, _ in selector.select()) else []
            if batch is None:
                return  # the zygote is done with this template
            for request in batch:
                self.fork(WorkerSpec(**request["spec"]))

    def fork(self, spec: WorkerSpec) -> None:
        pid = os.fork()
        if pid == 0:
            run_child(lambda: self.serve(spec))
        self.children[pid] = spec.replica
        send(self.channel, {"op": "spawned", "replica": spec.replica, "pid": pid})

    def serve(self, spec: WorkerSpec) -> None:
        """In the replica: its own session, the template's files closed, its own streams."""
        os.setsid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, self.sigchld if self.sigchld is not None else signal.SIG_DFL)
        os.closerange(3, MAX_FD)
        worker.connect_streams(spec)
        worker.serve_loaded(worker.connect_control(spec), self.handler, spec.concurrency)
