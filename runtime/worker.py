"""The process that hosts a Python handler: one replica of a function.

It connects to the mesh's replica socket three times (control, stdout, stderr), loads
the handler, says READY, then runs INVOKE frames as they come, up to `concurrency` at a
time. It is started forked from its function's template (fastest: the handler is loaded
already, see `fmesh.runtime.template`), forked from the zygote, or as a fresh
interpreter: `python -m fmesh.runtime.worker` with the spec's JSON on stdin.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import os
import socket
import sys
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from fmesh.runtime.wire import Kind, encode, read_frame, read_frame_blocking

from fmesh.events import Event, encode_data, format_time


@dataclass
class WorkerSpec:
    """Everything a replica needs to start; sent to the zygote, or on a fresh worker's stdin."""

    socket: str
    replica: str
    directory: str
    handler: str
    concurrency: int = 1
    env: dict[str, str] = field(default_factory=dict)
    memory_bytes: int | None = None
    sys_path: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        return cls(**json.loads(text))


class HandlerLoadError(Exception):
    pass


def load_handler(directory: str, reference: str) -> Callable[[Event], Any]:
    """`file.py:function`, the file relative to the function's folder."""
    file_part, _, function_name = reference.rpartition(":")
    if not file_part or not function_name:
        raise HandlerLoadError(f"handler {reference!r} must look like path/to/file.py:function")
    path = Path(directory, file_part)
    if not path.is_file():
        raise HandlerLoadError(f"handler file {file_part!r} not found in {directory}")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    if not hasattr(module, function_name):
        raise HandlerLoadError(f"{file_part} has no function {function_name!r}")
    handler = getattr(module, function_name)
    if not callable(handler):
        raise HandlerLoadError(f"{file_part}:{function_name} is a {type(handler).__name__}, not a function")
    check_takes_an_event(handler, f"{file_part}:{function_name}")
    return handler


def check_takes_an_event(handler: Callable[..., Any], name: str) -> None:
    """A handler is called with the event: one that cannot take it would fail every delivery."""
    try:
        inspect.signature(handler).bind(None)
    except ValueError:
        return  # no signature to read (some builtins): the first call will tell
    except TypeError:
        raise HandlerLoadError(f"{name} must take the event as its one argument, e.g. def handle(event):") from None


def result_frame(request: int, result: Any) -> bytes:
    """Encode what the handler returned: nothing, an event, or data to wrap."""
    if result is None:
        return encode(Kind.RESULT, request, {"ok": True, "reply": "none"})
    if isinstance(result, Event):
        return encode(Kind.RESULT, request, {"ok": True, "reply": "event", "attributes": result.attributes},
                      result.payload)
    if hasattr(result, "get_attributes") and hasattr(result, "get_data"):  # a cloudevents SDK event
        attributes = {k: format_time(v) if isinstance(v, datetime) else v
                      for k, v in result.get_attributes().items() if v is not None}
        body = encode_data(result.get_data(), attributes.get("datacontenttype"))
        return encode(Kind.RESULT, request, {"ok": True, "reply": "event", "attributes": attributes}, body)
    content_type = ("application/octet-stream" if isinstance(result, bytes | bytearray)
                    else "text/plain; charset=utf-8" if isinstance(result, str) else "application/json")
    return encode(Kind.RESULT, request, {"ok": True, "reply": "data", "content_type": content_type},
                  encode_data(result, content_type))


def handler_traceback(exc: BaseException) -> str:
    """The traceback of the user's code: fmesh's and importlib's frames around it are noise."""
    summary = traceback.TracebackException.from_exception(exc)
    summary.stack = traceback.StackSummary.from_list(
        [frame for frame in summary.stack
         if frame.filename != __file__ and not frame.filename.startswith("<frozen importlib")])
    return "".join(summary.format())


def failure_frame(request: int, exc: BaseException) -> tuple[bytes, int | None]:
    """The RESULT frame for a handler that raised, and the exit code if the replica must end."""
    if isinstance(exc, MemoryError):
        # Past the memory limit: a process that ran out of memory cannot be trusted further.
        print("out of memory: the handler exceeded this function's memory limit", file=sys.stderr, flush=True)
        return encode(Kind.RESULT, request, {"ok": False, "oom": True, "exiting": True,
                                             "error": "MemoryError: out of memory (memory limit reached)"}), 137
    print(handler_traceback(exc), file=sys.stderr, end="", flush=True)
    # SystemExit and KeyboardInterrupt: the handler asked the process to stop.
    exiting = not isinstance(exc, Exception)
    frame = encode(Kind.RESULT, request, {"ok": False, "exiting": exiting, "error": f"{type(exc).__name__}: {exc}"})
    return frame, 1 if exiting else None


def exit_now(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def connect_control(spec: WorkerSpec) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(spec.socket)
    sock.sendall(encode(Kind.HELLO, 0, {"replica": spec.replica, "stream": "control", "pid": os.getpid()}))
    return sock


def load_or_report(spec: WorkerSpec, sock: socket.socket) -> Callable[[Event], Any] | None:
    """The handler, or None after telling the mesh (and the logs) why it did not load."""
    try:
        return load_handler(spec.directory, spec.handler)
    except BaseException as exc:  # noqa: BLE001 - sys.exit() at import is a failure to load too
        report_load_failure(sock, exc, spec.directory)
        return None


def report_load_failure(sock: socket.socket, exc: BaseException, directory: str) -> None:
    print(handler_traceback(exc), file=sys.stderr, end="", flush=True)
    error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, HandlerLoadError) else str(exc)
    sock.sendall(encode(Kind.FAILED, 0, {"error": error, "where": failure_location(exc, directory)}))


def failure_location(exc: BaseException, directory: str) -> str | None:
    """`file:line` in the function's own code where loading failed (None if not in it)."""
    root = Path(directory).resolve()
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        places = [(exc.filename, exc.lineno)]
    else:
        places = [(frame.filename, frame.lineno) for frame in traceback.extract_tb(exc.__traceback__)]
    for filename, line in reversed(places):
        path = Path(filename).resolve()
        if path.is_relative_to(root):
            return f"{path.relative_to(root)}:{line}"
    return None


def serve_blocking(sock: socket.socket, handler: Callable[[Event], Any]) -> None:
    """One plain function, one event at a time: no event loop needed, so it starts fastest."""
    sock.sendall(encode(Kind.READY))
    reader = sock.makefile("rb")
    while (frame := read_frame_blocking(reader)) is not None and frame.kind is not Kind.STOP:
        try:
            out, code = result_frame(frame.request, handler(Event(frame.meta, frame.body))), None
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the mesh
            out, code = failure_frame(frame.request, exc)
        sock.sendall(out)
        if code is not None:
            exit_now(code)


class Invoker:
    """Runs the handler: coroutines on the loop, plain functions on threads."""

    def __init__(self, handler: Callable[[Event], Any], concurrency: int) -> None:
        self.handler = handler
        self.is_async = inspect.iscoroutinefunction(handler)
        self.pool = None if self.is_async else ThreadPoolExecutor(concurrency)

    async def __call__(self, event: Event) -> Any:
        if self.is_async:
            return await self.handler(event)
        return await asyncio.get_running_loop().run_in_executor(self.pool, self.handler, event)


async def handle(invoker: Invoker, request: int, event: Event, writer: asyncio.StreamWriter) -> None:
    try:
        writer.write(result_frame(request, await invoker(event)))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the mesh
        frame, code = failure_frame(request, exc)
        writer.write(frame)
        if code is not None:
            await writer.drain()
            exit_now(code)


async def serve_concurrently(sock: socket.socket, handler: Callable[[Event], Any], concurrency: int) -> None:
    """Async handlers, or several events at once: frames are read while handlers run."""
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    invoker = Invoker(handler, concurrency)
    writer.write(encode(Kind.READY))
    tasks: set[asyncio.Task] = set()
    while True:
        try:
            frame = await read_frame(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            break  # the mesh went away: nothing left to do
        if frame.kind is Kind.STOP:
            break
        task = asyncio.create_task(handle(invoker, frame.request, Event(frame.meta, frame.body), writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks)
    await writer.drain()


def serve(spec: WorkerSpec) -> None:
    sock = connect_control(spec)
    handler = load_or_report(spec, sock)
    if handler is not None:
        serve_loaded(sock, handler, spec.concurrency)


def serve_loaded(sock: socket.socket, handler: Callable[[Event], Any], concurrency: int) -> None:
    if runs_a_loop(handler, concurrency):
        run_loop(serve_concurrently(sock, handler, concurrency))
    else:
        serve_blocking(sock, handler)


def runs_a_loop(handler: Callable[[Event], Any], concurrency: int) -> bool:
    """Async handlers, and sync ones taking several events at once, run on an event loop."""
    return concurrency > 1 or inspect.iscoroutinefunction(handler)


def event_loop_runner() -> Callable[[Any], Any]:
    """uvloop's run (loaded here if need be: a function's template loads it once for all its
    replicas, where it costs a cold start some 8 ms), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def run_loop(coroutine: Any) -> None:
    event_loop_runner()(coroutine)


def connect_stream(spec: WorkerSpec, stream: str, fd: int) -> None:
    """Point file descriptor `fd` at a log stream of the mesh, so C-level writes go there too."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(spec.socket)
    sock.sendall(encode(Kind.HELLO, 0, {"replica": spec.replica, "stream": stream, "pid": os.getpid()}))
    os.dup2(sock.fileno(), fd)
    sock.close()


def connect_streams(spec: WorkerSpec) -> None:
    connect_stream(spec, "stdout", 1)
    connect_stream(spec, "stderr", 2)


def prepare(spec: WorkerSpec) -> None:
    """Process set-up shared by every way of starting: streams, limits, env, paths."""
    connect_streams(spec)
    # Line-buffered, so logs show up promptly; and printing what is not valid Unicode (a
    # lone surrogate from the event) must not raise in the middle of a traceback.
    sys.stdout = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")
    sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")
    if spec.memory_bytes:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (spec.memory_bytes, spec.memory_bytes))
    os.environ.clear()
    os.environ.update(spec.env)
    os.chdir(spec.directory)
    for entry in reversed([spec.directory, *spec.sys_path]):
        sys.path.insert(0, entry)


def run(spec: WorkerSpec) -> None:
    prepare(spec)
    try:
        serve(spec)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def spec_from_stdin() -> WorkerSpec:
    """A fresh interpreter's spec, on stdin (it holds secrets: never on the command line)."""
    spec = WorkerSpec.from_json(sys.stdin.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the handler gets no stdin, as a forked replica does
    os.close(devnull)
    return spec


if __name__ == "__main__":
    run(spec_from_stdin())
