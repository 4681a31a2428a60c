"""The CloudEvents HTTP binding, as pure functions over headers and body.

Reading: binary mode (`ce-*` headers), structured mode (`application/cloudevents+json`)
and batch mode (`application/cloudevents-batch+json`, all or nothing), all through the
`cloudevents` SDK. Writing: binary mode by default, structured on request.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from urllib.parse import unquote_to_bytes

from cloudevents.core.bindings import http as sdk_http
from cloudevents.core.formats.json import JSONFormat

from fmesh.bindings.common import TOO_DEEP
from fmesh.errors import InvalidEvent, UnsupportedContentType
from fmesh.events import RAW_FORMAT, Event, from_sdk, strict_factory, to_sdk, to_sdk_decoded

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
JSON_FORMAT = JSONFormat()


def media_type(headers: Mapping[str, str]) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def is_binary_mode(headers: Mapping[str, str]) -> bool:
    return any(name.startswith("ce-") for name in headers)


def read_events(headers: Mapping[str, str], body: bytes) -> list[Event]:
    """The events in one HTTP request; `headers` has lowercase names.

    Raises InvalidEvent (400) naming the bad attribute, UnsupportedContentType (415).
    """
    if is_binary_mode(headers):
        check_percent_encoding(headers)
        return [_read(sdk_http.from_binary, headers, body, RAW_FORMAT)]
    kind = media_type(headers)
    if kind == STRUCTURED:
        return [_read(sdk_http.from_structured, headers, body, JSON_FORMAT)]
    if kind == BATCH:
        return read_batch(body)
    raise UnsupportedContentType(headers.get("content-type", "(none)"))


def check_percent_encoding(headers: Mapping[str, str]) -> None:
    """The SDK decodes `ce-*` values leniently (bad UTF-8 becomes U+FFFD); refuse them instead,
    so an attribute is stored exactly as the sender meant it or not at all."""
    for name, value in headers.items():
        if name.startswith("ce-") and "%" in value:
            try:
                unquote_to_bytes(value).decode("utf-8")
            except UnicodeDecodeError as exc:
                attribute = name[3:]
                raise InvalidEvent(f"attribute {attribute!r}: the percent-encoded header {name} is not "
                                   f"UTF-8 ({exc.reason} at byte {exc.start})", attribute) from None


def _read(reader, headers: Mapping[str, str], body: bytes, fmt) -> Event:  # type: ignore[no-untyped-def]
    try:
        return from_sdk(reader(sdk_http.HTTPMessage(dict(headers), body), fmt, strict_factory))
    except InvalidEvent:
        raise
    except json.JSONDecodeError as exc:
        raise InvalidEvent(f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"body is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    except RecursionError as exc:
        raise InvalidEvent(f"body is {TOO_DEEP}") from exc
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidEvent(f"not a valid CloudEvent: {_describe(exc)}", _attribute_of(exc)) from exc


def read_batch(body: bytes) -> list[Event]:
    """A JSON array of structured events; one bad event refuses the whole batch."""
    try:
        items = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidEvent(f"batch body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidEvent(f"batch body is {TOO_DEEP}") from exc
    if not isinstance(items, list):
        raise InvalidEvent(f"a batch must be a JSON array of events, got {type(items).__name__}")
    events = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidEvent(f"batch item {index} is not a JSON object")
        try:
            events.append(_read(sdk_http.from_structured, {}, json.dumps(item).encode(), JSON_FORMAT))
        except InvalidEvent as exc:
            raise InvalidEvent(f"batch item {index}: {exc}", exc.attribute) from exc
    return events


def _describe(exc: Exception) -> str:
    if _attribute_of(exc) == "time":
        return f"attribute 'time' is not an RFC 3339 timestamp ({exc})"
    return str(exc) or type(exc).__name__


def _attribute_of(exc: Exception) -> str | None:
    """The SDK parses only `time` with dateutil, so a dateutil error is about `time`."""
    tb = exc.__traceback__
    while tb is not None:
        if "dateutil" in tb.tb_frame.f_code.co_filename:
            return "time"
        tb = tb.tb_next
    return None


def write_binary(event: Event) -> tuple[dict[str, str], bytes]:
    """Headers and body of `event` in binary mode; the payload bytes go out untouched."""
    message = sdk_http.to_binary(to_sdk(event), RAW_FORMAT)
    return message.headers, message.body


def write_batch(events: list[Event]) -> tuple[dict[str, str], bytes]:
    """Headers and body of a batch-mode request: a JSON array of events in the JSON format,
    each payload as `data_base64`, so that the bytes arrive exactly as they left."""
    body = b"[" + b",".join(JSON_FORMAT.write(to_sdk(event)) for event in events) + b"]"
    return {"content-type": BATCH}, body


def write_structured(event: Event) -> tuple[dict[str, str], bytes]:
    message = sdk_http.to_structured(to_sdk_decoded(event), JSON_FORMAT)
    return message.headers, message.body
