"""The CloudEvents JSON format as fmesh reads it: the SDK's, with the checks an edge needs.

The SDK's `JSONFormat.read` parses `time` into a datetime (cutting nanoseconds, refusing
a leap second, and writing it back differently), decodes `data_base64` leniently (`"!!!!"`
becomes empty data) and recurses as deep as the JSON goes. `EventJSONFormat` parses the
JSON itself, within a nesting depth, checks `time` and `data_base64`, and hands the rest
to the SDK; `time` comes back exactly as the producer wrote it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

from cloudevents.core.base import BaseCloudEvent, EventFactory
from cloudevents.core.formats.json import JSONFormat

from fmesh.errors import InvalidEvent
from fmesh.events import checked_time

# Data may nest this deep; a structured event adds one level, a batch two. Python's own
# parser gives up near 1,000, and every hop (store, replica, reply) walks the data again.
MAX_DATA_DEPTH = 256
TOO_DEEP = f"JSON nested too deeply: data may nest at most {MAX_DATA_DEPTH} levels"


def parse_json(body: bytes | str, what: str, envelope: int) -> Any:
    """`body` as JSON whose data nests at most MAX_DATA_DEPTH levels below the `envelope`
    levels around it (1 for an event, 2 for a batch); InvalidEvent saying what is wrong."""
    too_deep = InvalidEvent(f"{what} is {TOO_DEEP}")
    try:
        value = json.loads(body, parse_constant=_not_json, parse_float=_finite)
    except NotJson as exc:
        raise InvalidEvent(f"{what} is not valid JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InvalidEvent(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"{what} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except RecursionError:
        raise too_deep from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise InvalidEvent(f"{what} holds a number too long to read ({str(exc)[:60]})") from None
    limit = MAX_DATA_DEPTH + envelope
    if _brackets(body) > limit and nesting_depth(value) > limit:
        raise too_deep
    return value


class NotJson(ValueError):
    """What Python's parser takes but JSON (RFC 8259) has not: NaN, Infinity, 1e999."""


def _not_json(constant: str) -> float:
    raise NotJson(f"{constant} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise NotJson(f"{text[:40]} is past what a JSON number can hold here")
    return value


def check_json_payload(payload: bytes | None) -> None:
    """A binary-mode JSON payload stays bytes, but one nested past MAX_DATA_DEPTH would fail
    in every replica that decodes it: refused at the edge. Only bodies with that many
    brackets are parsed; one that is not JSON at all is the producer's to send."""
    if payload is None or _brackets(payload) <= MAX_DATA_DEPTH:
        return
    try:
        value = json.loads(payload)
    except RecursionError:
        raise InvalidEvent(f"data is {TOO_DEEP}", "data") from None
    except ValueError:
        return
    if nesting_depth(value) > MAX_DATA_DEPTH:
        raise InvalidEvent(f"data is {TOO_DEEP}", "data")


def _brackets(body: bytes | str) -> int:
    """An upper bound of the nesting depth, found at C speed: most bodies need no walk."""
    if isinstance(body, str):
        return body.count("[") + body.count("{")
    return body.count(b"[") + body.count(b"{")


def nesting_depth(value: Any) -> int:
    """How deep arrays and objects nest in `value` (a scalar is 0), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


class EventJSONFormat(JSONFormat):
    """The SDK's JSON format, reading with fmesh's checks (see the module docstring)."""

    def read(self, event_factory: EventFactory | None, data: str | bytes) -> BaseCloudEvent:
        return self.read_object(event_factory, parse_json(data, "body", envelope=1))

    def read_object(self, event_factory: EventFactory | None, item: Any) -> BaseCloudEvent:
        """One event from its already parsed JSON object."""
        if not isinstance(item, dict):
            raise InvalidEvent(f"a structured event is a JSON object, got {type(item).__name__}")
        attributes = dict(item)
        time = attributes.pop("time", None)
        check_data_base64(attributes)
        event = super().read(event_factory, json.dumps(attributes))
        if time is not None:
            event.get_attributes()["time"] = checked_time(time)
        return event


def check_data_base64(item: dict[str, Any]) -> None:
    """`data_base64` must be base64 and must not come with `data` (the spec's MUST NOT)."""
    value = item.get("data_base64")
    if value is None:
        return
    if "data" in item:
        raise InvalidEvent("an event has 'data' or 'data_base64', not both", "data_base64")
    if not isinstance(value, str):
        raise InvalidEvent(f"'data_base64' must be a base64 string, got {type(value).__name__}", "data_base64")
    try:
        base64.b64decode("".join(value.split()), validate=True)  # line breaks are common, the rest is not
    except (binascii.Error, ValueError) as exc:
        raise InvalidEvent(f"'data_base64' is not valid base64: {exc}", "data_base64") from None


JSON_FORMAT = EventJSONFormat()
