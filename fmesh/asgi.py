"""Plain ASGI plumbing shared by the ingress and the webhook triggers: types, JSON
answers, and a body reader that stops as soon as a size limit is passed."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

import orjson

from fmesh.errors import ClientGone, EventTooLarge, HeadersTooLarge

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]

# What a mesh node serves itself: the ingress at `/`, and these paths and all below them.
MESH_PATHS = ("/v1", "/docs", "/redoc", "/openapi.json", "/healthz", "/metrics", "/ui")


def is_mesh_path(path: str) -> bool:
    """Whether `path` (as a trigger would be configured) is, or is under, one the mesh serves."""
    plain = unquote(path).rstrip("/") or "/"
    return plain == "/" or any(plain == own or plain.startswith(own + "/") for own in MESH_PATHS)


async def respond(send: Send, status: int, body: dict[str, Any], headers: list | None = None) -> None:
    # An error may quote what the client sent, lone surrogates included: those become '?',
    # since their JSON escapes are refused by strict parsers.
    payload = json.dumps(body, ensure_ascii=False).encode("utf-8", "replace")
    await send({"type": "http.response.start", "status": status,
                "headers": [*JSON_HEADERS, *(headers or []), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


ACCEPTED_HEADERS = [*JSON_HEADERS]


async def accepted(send: Send, event_id: str) -> None:
    """202 {"id": ...}: the ingress's hot path, so without building a dict to dump."""
    payload = b'{"id":' + orjson.dumps(event_id) + b"}"
    await send({"type": "http.response.start", "status": 202,
                "headers": [*ACCEPTED_HEADERS, (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def header_dict(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}


def check_headers(scope: Scope, max_bytes: int, max_count: int) -> None:
    """Refuse (HeadersTooLarge) a request with more than `max_count` headers or `max_bytes` of them."""
    headers = scope["headers"]
    if len(headers) > max_count:
        raise HeadersTooLarge(f"request has {len(headers)} headers, more than the limit of {max_count}")
    size = sum(len(name) + len(value) for name, value in headers)
    if size > max_bytes:
        raise HeadersTooLarge(f"request headers are {size} bytes, more than the limit of {max_bytes}")


async def refused_headers(scope: Scope, send: Send, max_bytes: int, max_count: int) -> bool:
    """Whether the request's headers are past the limits, and were answered 431 for it."""
    try:
        check_headers(scope, max_bytes, max_count)
    except HeadersTooLarge as exc:
        await respond(send, 431, {"error": str(exc)})
        return True
    return False


def ce_header_bytes(scope: Scope) -> int:
    """The bytes of the `ce-*` headers: in binary mode they are the event's attributes."""
    return sum(len(name) + len(value) for name, value in scope["headers"] if name[:3].lower() == b"ce-")


def check_declared_size(scope: Scope, limit: int) -> None:
    """Refuse (EventTooLarge) a request whose Content-Length is past `limit`, before reading it."""
    declared = next((int(v) for k, v in scope["headers"] if k == b"content-length" and v.isdigit()), None)
    if declared is not None and declared > limit:
        raise EventTooLarge(declared, limit)


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, refusing (EventTooLarge) as soon as it passes `limit`."""
    check_declared_size(scope, limit)
    return await read_stream(receive, limit)


async def read_stream(receive: Receive, limit: int) -> bytes:
    """The body as it arrives, refusing (EventTooLarge) as soon as it passes `limit`; a client
    gone before its body ended (http.disconnect) is ClientGone, not a shorter body."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            raise ClientGone(size)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise EventTooLarge(size, limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
