"""The link between the mesh and its ingress workers: one Unix socket per worker, on which
the worker sends each request to `POST /` it parsed (FORWARD) and the mesh sends back the
answer (ANSWER), many at a time, told apart by request number.

A FORWARD frame's meta holds the headers, the client certificate, the events' attributes
and the lengths of the byte strings its body holds in turn: the request body (only when a
signature covers it), each event's payload, the body of the worker's own refusal. Event
data is thus never re-encoded. Only the mesh's own workers may connect: the mesh checks
each connection's process id (SO_PEERCRED).
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from fmesh.broker.ingress_http import Answer, Collector, Forwarded
from fmesh.runtime.wire import Coalescing, Frame, Kind, encode, read_frame

from fmesh import meshlog
from fmesh.asgi import Send
from fmesh.events import Event

log = meshlog.get("fmesh.deploy")
NONE = -1   # the length that stands for "no bytes at all", as opposed to b""
INTERNAL = Answer(500, [(b"content-type", b"application/json")], b'{"error": "the mesh failed to take this request"}')


def encode_forwarded(number: int, request: Forwarded) -> bytes:
    parts = [request.body, *(event.payload for event in request.events),
             request.refusal.body if request.refusal else None]
    meta: dict[str, Any] = {"h": request.headers, "t": request.tls, "e": [e.attributes for e in request.events],
                            "n": [NONE if p is None else len(p) for p in parts]}
    if request.refusal is not None:
        meta["r"] = [request.refusal.status, _text_pairs(request.refusal.headers)]
    return encode(Kind.FORWARD, number, meta, b"".join(p for p in parts if p))


def decode_forwarded(frame: Frame) -> Forwarded:
    meta, data = frame.meta, frame.body or b""
    parts, offset = [], 0
    for length in meta["n"]:
        parts.append(None if length == NONE else data[offset:offset + length])
        offset += max(0, length)
    body, payloads, refusal_body = parts[0], parts[1:-1], parts[-1]
    events = [Event(attributes, payload) for attributes, payload in zip(meta["e"], payloads, strict=True)]
    refusal = None
    if "r" in meta:
        status, headers = meta["r"]
        refusal = Answer(status, _byte_pairs(headers), refusal_body or b"")
    return Forwarded(meta["h"], meta["t"], body, events, refusal)


def encode_answer(number: int, answer: Answer) -> bytes:
    return encode(Kind.ANSWER, number, {"s": answer.status, "h": _text_pairs(answer.headers)}, answer.body)


def decode_answer(frame: Frame) -> Answer:
    return Answer(frame.meta["s"], _byte_pairs(frame.meta["h"]), frame.body or b"")


def _text_pairs(headers: list[tuple[bytes, bytes]]) -> list[list[str]]:
    return [[name.decode("latin-1"), value.decode("latin-1")] for name, value in headers]


def _byte_pairs(headers: list[list[str]]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def peer_pid(writer: asyncio.StreamWriter) -> int:
    sock: socket.socket = writer.get_extra_info("socket")
    pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return pid


class TakesForwarded(Protocol):
    """What answers a forwarded request: the mesh's ingress (broker.ingress.Ingress)."""

    async def forwarded(self, request: Forwarded, send: Send) -> None: ...


class IngressLink:
    """The mesh's end: answers what its ingress workers forward, each request in a task of
    its own (the store batches what arrives together)."""

    def __init__(self, ingress: TakesForwarded, is_worker: Callable[[int], bool]) -> None:
        self.ingress = ingress
        self.is_worker = is_worker
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._links: set[asyncio.StreamWriter] = set()

    async def start(self, path: Path) -> None:
        self.server = await asyncio.start_unix_server(self._serve, path)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self._links):  # each link's reader ends, and with it its handler
            writer.close()
        if self._tasks:  # what was being stored is stored, even if nobody waits for the answer
            await asyncio.wait(self._tasks)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pid = peer_pid(writer)
        if not self.is_worker(pid):
            log.warning("refused a connection to the ingress link from a process that is no ingress worker", pid=pid)
            writer.close()
            return
        out = Coalescing(writer)
        self._links.add(writer)
        try:
            while True:
                frame = await read_frame(reader)
                task = asyncio.create_task(self._answer(frame, out))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the worker stopped
        except ValueError as exc:
            log.warning("dropped the link to an ingress worker that sent a frame out of line", pid=pid, error=str(exc))
        self._links.discard(writer)
        writer.close()

    async def _answer(self, frame: Frame, out: Coalescing) -> None:
        collector = Collector()
        try:
            await self.ingress.forwarded(decode_forwarded(frame), collector)
            answer = collector.answer()
        except Exception as exc:  # noqa: BLE001 - one bad request must not end the link
            log.exception("an ingress worker's request failed", error=str(exc))
            answer = INTERNAL
        out.write(encode_answer(frame.request, answer))


class LinkClient:
    """A worker's end: `hand_on` sends one request and waits for its answer; ConnectionError
    when the mesh is gone (`on_lost` is then called once)."""

    def __init__(self, path: Path, on_lost: Callable[[], None] = lambda: None) -> None:
        self.path = path
        self.on_lost = on_lost
        self._numbers = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Answer]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._out: Coalescing | None = None
        self._reading: asyncio.Task | None = None

    async def connect(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(self.path)
        self._out = Coalescing(self._writer)
        self._reading = asyncio.create_task(self._read(reader))

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reading is not None:
            self._reading.cancel()

    async def hand_on(self, request: Forwarded) -> Answer:
        if self._writer is None or self._out is None or self._writer.is_closing():
            raise ConnectionError("no link to the mesh")
        number = next(self._numbers) & 0xFFFFFFFF
        waiting = self._waiting[number] = asyncio.get_running_loop().create_future()
        self._out.write(encode_forwarded(number, request))
        try:
            return await waiting
        finally:
            self._waiting.pop(number, None)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                frame = await read_frame(reader)
                waiting = self._waiting.get(frame.request)
                if waiting is not None and not waiting.done():
                    waiting.set_result(decode_answer(frame))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_exception(ConnectionError("the link to the mesh closed"))
        if self._writer is not None:
            self._writer.close()
        self.on_lost()
