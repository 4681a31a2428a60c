"""Frames between the mesh and a Python replica (or an ingress worker) over a Unix socket.

A frame is `length(4) kind(1) request(4) meta_length(4) meta(JSON) body(bytes)`, all
lengths big-endian. `meta` carries small structured fields (event attributes, error
text); `body` carries raw payload bytes, so event data is never re-encoded.
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, BinaryIO

from fmesh.events import dump_attributes, load_attributes, valid_text

HEADER = struct.Struct("!IBII")
MAX_FRAME = 64 * 1024 * 1024


class Kind(IntEnum):
    HELLO = 1      # replica → mesh: {replica, stream: control|stdout|stderr, pid}
    READY = 2      # replica → mesh: handler imported
    FAILED = 3     # replica → mesh: handler could not load {error}
    INVOKE = 4     # mesh → replica: meta = attributes, body = payload
    RESULT = 5     # replica → mesh: {ok, reply: none|event|data, attributes?, content_type?, error?}
    STOP = 6       # mesh → replica: finish in-flight work and exit
    FORWARD = 7    # ingress worker → mesh: a request to `POST /` (deploy/ingress_link.py)
    ANSWER = 8     # mesh → ingress worker: the answer to one


@dataclass(slots=True)
class Frame:
    kind: Kind
    request: int
    meta: dict[str, Any]
    body: bytes | None


def encode(kind: Kind, request: int = 0, meta: dict[str, Any] | None = None, body: bytes | None = None) -> bytes:
    meta_bytes = dump_attributes(meta) if meta else b"{}"
    payload = body if body is not None else b""
    # The body-present flag lives in the top bit of the kind byte: b"" and None differ.
    kind_byte = int(kind) | (0x80 if body is not None else 0)
    length = HEADER.size - 4 + len(meta_bytes) + len(payload)
    return HEADER.pack(length, kind_byte, request, len(meta_bytes)) + meta_bytes + payload


def decode(data: bytes) -> Frame:
    """A frame from its bytes after the length prefix."""
    kind_byte, request, meta_length = struct.unpack_from("!BII", data)
    start = 9
    meta = load_meta(data[start:start + meta_length]) if meta_length else {}
    body = bytes(data[start + meta_length:]) if kind_byte & 0x80 else None
    return Frame(Kind(kind_byte & 0x7F), request, meta, body)


def load_meta(data: bytes) -> dict:
    """A frame's metadata. What a handler put there need not be valid Unicode (a lone
    surrogate from JSON it was sent): read it anyway, with such characters replaced."""
    try:
        return load_attributes(data)
    except ValueError:
        return valid_texts(json.loads(data))


def valid_texts(value: Any) -> Any:
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, dict):
        return {valid_text(k): valid_texts(v) for k, v in value.items()}
    if isinstance(value, list):
        return [valid_texts(v) for v in value]
    return value


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """The next frame; raises asyncio.IncompleteReadError at end of stream."""
    length = struct.unpack("!I", await reader.readexactly(4))[0]
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes exceeds {MAX_FRAME}")
    return decode(await reader.readexactly(length))


def read_frame_blocking(reader: BinaryIO) -> Frame | None:
    """The next frame from a blocking file, or None at end of stream."""
    prefix = reader.read(4)
    if len(prefix) < 4:
        return None
    length = struct.unpack("!I", prefix)[0]
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes exceeds {MAX_FRAME}")
    data = reader.read(length)
    return decode(data) if len(data) == length else None


class Coalescing:
    """Frames written in one turn of the loop go out in one write (one system call, not one
    per frame: the link carries thousands of small frames a second)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._pending: list[bytes] = []

    def write(self, frame: bytes) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(frame)

    def _flush(self) -> None:
        frames, self._pending = self._pending, []
        if not self.writer.is_closing():
            self.writer.write(b"".join(frames))
