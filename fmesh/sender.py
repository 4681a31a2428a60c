"""`fmesh send`: build a CloudEvent with the SDK and post it to a mesh."""

from __future__ import annotations

import json
import ssl
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from fmesh.bindings.http import write_binary, write_structured
from fmesh.errors import BrokerUnreachable, InvalidEvent, NotAMesh
from fmesh.events import Event, encode_data, format_time
from fmesh.tls import connect_hint


def read_data(data: str | None, content_type: str | None, text: bool = False) -> tuple[Any, str | None]:
    """The data and its content type: as it is with a content type given, text with `text`,
    else JSON (InvalidEvent when it does not parse: a typo must not go out as a string)."""
    if data is None:
        return None, content_type
    raw: bytes
    if data.startswith("@"):
        path = Path(data[1:])
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise InvalidEvent(f"cannot read data file {path}: {exc.strerror}") from exc
    else:
        raw = data.encode()
    if content_type is not None:
        return raw, content_type
    if text:
        try:
            return raw.decode("utf-8"), "text/plain"
        except UnicodeDecodeError as exc:
            raise InvalidEvent(f"--data-text is not UTF-8 text ({exc.reason} at byte {exc.start}): send bytes "
                               "with --data @file --content-type application/octet-stream") from exc
    try:
        return json.loads(raw), "application/json"
    except ValueError as exc:
        where = data if data.startswith("@") else "--data"
        raise InvalidEvent(f"{where} is not JSON ({exc}): quote a JSON string as '\"hi\"', send text with "
                           "--data-text, or other bytes with --content-type") from exc


def build_event(type: str, source: str, data: str | None, subject: str | None = None,
                extensions: dict[str, str] | None = None, id: str | None = None,
                content_type: str | None = None, text: bool = False) -> Event:
    value, content_type = read_data(data, content_type, text)
    attributes: dict[str, Any] = {"specversion": "1.0", "id": id or str(uuid.uuid4()), "source": source,
                                  "type": type, "time": format_time(datetime.now(UTC))}
    if subject:
        attributes["subject"] = subject
    if content_type:
        attributes["datacontenttype"] = content_type
    attributes.update(extensions or {})
    return Event(attributes, encode_data(value, content_type))


def post_event(mesh: str, event: Event, structured: bool = False, token: str | None = None,
               verify: ssl.SSLContext | bool = True) -> tuple[int, Any]:
    """POST the event; (status, answer). `token` is sent as Bearer (a mesh with ingress auth
    off ignores it); `verify` as httpx takes it (see `fmesh.tls.cli_context`)."""
    headers, body = write_structured(event) if structured else write_binary(event)
    if token:
        headers = {**headers, "authorization": f"Bearer {token}"}
    try:
        response = httpx.post(mesh.rstrip("/") + "/", headers=headers, content=body, timeout=30, verify=verify)
    except httpx.HTTPError as exc:
        raise BrokerUnreachable(mesh, f"{exc}; {connect_hint(exc)}") from exc
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):  # the ingress answers every event with a JSON object
        raise NotAMesh.answered(mesh, response)
    return response.status_code, answer
