"""The zygote: a template process that forks Python replicas in milliseconds.

It starts once per mesh, imports the worker and the libraries handlers commonly use,
then waits. Each `spawn` request (a JSON line on stdin) forks a child that is already
warm: it only has to load the handler file. The zygote reports each child's pid when
forked and its exit status when it ends (JSON lines on stdout), because only the
zygote can wait for its children.

    → {"op": "spawn", "spec": {...WorkerSpec...}}
    ← {"op": "spawned", "replica": "...", "pid": 123}
    ← {"op": "exited", "replica": "...", "pid": 123, "code": 0 | null, "signal": 9 | null}
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import sys

from fmesh.runtime import worker  # preloaded: this is what makes forks warm

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
    os.write(1, (json.dumps(message) + "\n").encode())


def spawn(spec_json: dict, control_fds: tuple[int, ...]) -> tuple[str, int]:
    spec = worker.WorkerSpec(**spec_json)
    pid = os.fork()
    if pid == 0:  # the replica
        try:
            os.setsid()
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)  # the zygote's control pipes must not leak into the replica
            os.dup2(devnull, 1)
            os.close(devnull)
            for fd in control_fds:
                if fd > 2:
                    os.close(fd)
            worker.run(spec)
            code = 0
        except BaseException:  # noqa: BLE001 - a forked child must never return into the zygote
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    return spec.replica, pid


def reap(children: dict[int, str]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        replica = children.pop(pid, "?")
        code = os.waitstatus_to_exitcode(status)
        emit({"op": "exited", "replica": replica, "pid": pid,
              "code": code if code >= 0 else None, "signal": -code if code < 0 else None})


def main() -> None:
    preload()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ, "control")
    selector.register(wake_r, selectors.EVENT_READ, "wake")
    children: dict[int, str] = {}
    buffer = b""
    # Which top-level modules a forked replica gets for free, so the mesh can tell
    # whether a function's own packages would clash with them.
    emit({"op": "ready", "pid": os.getpid(), "modules": sorted({m.split(".")[0] for m in sys.modules})})
    while True:
        for key, _ in selector.select():
            if key.data == "wake":
                os.read(wake_r, 4096)
                reap(children)
                continue
            chunk = os.read(0, 65536)
            if not chunk:  # the mesh closed our stdin: it is gone, and so are we
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                if request.get("op") == "spawn":
                    replica, pid = spawn(request["spec"], (wake_r, wake_w, selector_fd(selector)))
                    children[pid] = replica
                    emit({"op": "spawned", "replica": replica, "pid": pid})
        reap(children)


def selector_fd(selector: selectors.BaseSelector) -> int:
    fileno = getattr(selector, "fileno", None)
    return fileno() if fileno else -1


if __name__ == "__main__":
    sys.exit(main())
