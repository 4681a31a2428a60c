"""The CloudEvents NATS protocol binding (version 1.0.3): binary and structured mode.

The `cloudevents` SDK has no NATS binding, so this module follows the spec directly:

- binary mode: every attribute, `datacontenttype` included, travels in a header named
  `ce-<attribute>`, its value percent-encoded (spec 3.1.3.2: space, `"`, `%` and
  anything outside printable ASCII); the data is the message body, byte-exact.
- structured mode: `Content-Type: application/cloudevents+json` and the JSON event
  format (the SDK's) as the body.

Reading decides as the spec says: a `Content-Type` starting `application/cloudevents`
is structured; otherwise any `ce-` header is binary. A message without headers whose
body is a JSON object with `specversion` is also read as structured, as binding 1.0.2
prescribed before NATS had headers. Anything else is not a CloudEvent (`None`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from fmesh.bindings.common import canonical, reading
from fmesh.bindings.json_format import JSON_FORMAT
from fmesh.events import Event, checked_time, from_sdk, strict_factory, to_sdk_decoded

PREFIX = "ce-"
STRUCTURED = "application/cloudevents+json"
STRUCTURED_PREFIX = "application/cloudevents"
# Printable ASCII except `"` and `%`: what the spec leaves unencoded.
SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')
_ESCAPE = re.compile(r"\\(.)")


def encode_value(value: Any) -> str:
    return quote(canonical(value), safe=SAFE)


def decode_value(text: str) -> str:
    """Undo a double-quoted string, then one round of strict (UTF-8) percent-decoding."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = _ESCAPE.sub(r"\1", text[1:-1])
    return unquote_to_bytes(text).decode("utf-8")


def content_type(headers: Mapping[str, str]) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == "content-type"), None)


def read_message(headers: Mapping[str, str] | None, body: bytes, where: str) -> Event | None:
    """The CloudEvent in a NATS message, None if it is not one; InvalidEvent if broken."""
    headers = headers or {}
    with reading(where):
        if (content_type(headers) or "").lower().startswith(STRUCTURED_PREFIX):
            return read_structured(body)
        if any(name.lower().startswith(PREFIX) for name in headers):
            return read_binary(headers, body)
        if not headers and looks_structured(body):
            return read_structured(body)
    return None


def looks_structured(body: bytes) -> bool:
    return body.lstrip()[:1] == b"{" and b'"specversion"' in body


def read_structured(body: bytes) -> Event:
    return from_sdk(JSON_FORMAT.read(strict_factory, body))


def read_binary(headers: Mapping[str, str], body: bytes) -> Event:
    attributes: dict[str, Any] = {}
    for name, value in headers.items():
        if name.lower().startswith(PREFIX):
            attributes[name.lower()[len(PREFIX):]] = decode_value(value)
    if "datacontenttype" not in attributes and content_type(headers):
        attributes["datacontenttype"] = content_type(headers)  # lenient: some senders use it
    time = attributes.pop("time", None)
    event = from_sdk(strict_factory(attributes, body or None))
    if time is not None:
        event.attributes["time"] = checked_time(time)
    return event


def write_binary(event: Event) -> tuple[dict[str, str], bytes]:
    """Headers and body of `event` in binary mode."""
    headers = {PREFIX + name: encode_value(value) for name, value in event.attributes.items()}
    return headers, event.payload or b""


def write_structured(event: Event) -> tuple[dict[str, str], bytes]:
    return {"Content-Type": STRUCTURED}, JSON_FORMAT.write(to_sdk_decoded(event))
