"""The event as fmesh carries it, and its conversion to and from the cloudevents SDK.

Inside the mesh an event is its context attributes (extensions included) plus the raw
payload bytes exactly as they arrived, so non-JSON data stays byte-exact end to end.
At the edges the `cloudevents` SDK does the wire formats; `RawDataFormat` only tells it
to leave binary-mode bodies untouched instead of parsing them.
"""

from __future__ import annotations

import calendar
import dataclasses
import json
import re
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
from datetime import time as time_of_day
from decimal import Decimal
from enum import Enum
from pathlib import PurePath
from typing import Any

import orjson
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.exceptions import CloudEventValidationError
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as SdkEvent

from fmesh.errors import InvalidEvent
from fmesh.names import is_name
from fmesh.tracecontext import check_trace_attributes

REQUIRED = ("id", "source", "type", "specversion")
JSON_CONTENT_TYPE = re.compile(r"^(application|text)/([a-zA-Z0-9\-.]+\+)?json(;.*)?$", re.I)
EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")


def is_json_content_type(content_type: str | None) -> bool:
    """Data without a content type is JSON, as the CloudEvents JSON format says."""
    return content_type is None or bool(JSON_CONTENT_TYPE.match(content_type))


class Event(Mapping[str, Any]):
    """A CloudEvent: item access to attributes and extensions, `.data` decoded like the SDK.

    `payload` holds the data bytes exactly as received (None when the event has no data).
    """

    __slots__ = ("attributes", "payload")

    def __init__(self, attributes: dict[str, Any], payload: bytes | None = None) -> None:
        self.attributes = attributes
        self.payload = payload

    def __getitem__(self, key: str) -> Any:
        return self.attributes[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.attributes)

    def __len__(self) -> int:
        return len(self.attributes)

    def __repr__(self) -> str:
        return f"Event({self.attributes!r}, payload={self.payload!r:.60})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return self.attributes == other.attributes and self.payload == other.payload

    @property
    def id(self) -> str:
        return self.attributes["id"]

    @property
    def type(self) -> str:
        return self.attributes["type"]

    @property
    def source(self) -> str:
        return self.attributes["source"]

    @property
    def data(self) -> Any:
        """The payload decoded: JSON into Python values, text into str, else bytes."""
        return decode_data(self.payload, self.attributes.get("datacontenttype"))

    def size(self) -> int:
        """Approximate stored size, for limits."""
        return len(self.payload or b"") + sum(len(k) + len(str(v)) for k, v in self.items())


def decode_data(payload: bytes | None, content_type: str | None) -> Any:
    if payload is None:
        return None
    if is_json_content_type(content_type):
        try:
            return json.loads(payload)
        except ValueError:
            pass
    if content_type is None or content_type.startswith("text/") or is_json_content_type(content_type):
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            return payload
    return payload


def encode_data(data: Any, content_type: str | None) -> bytes | None:
    """Turn handler or SDK data into payload bytes (bytes stay as they are)."""
    if data is None:
        return None
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, str) and not is_json_content_type(content_type):
        return data.encode("utf-8")
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=json_form).encode("utf-8")


def json_form(value: Any) -> Any:
    """What `json.dumps` cannot write by itself, as JSON: times in ISO 8601 (RFC 3339 when they
    have a zone), ids, decimals and paths as strings, sets as lists, enums as their values,
    pydantic models and dataclasses as their fields. Anything else is a TypeError that names
    the type: its str() (`<Foo object at 0x7f...>`) is nobody's data, and publishing it would
    hide the handler's mistake."""
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, date | time_of_day):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal | PurePath):
        return str(value)
    if isinstance(value, set | frozenset):
        try:
            return sorted(value)  # the same bytes from every replica, whatever the hash seed
        except TypeError:
            return list(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, type):
        raise TypeError(f"cannot turn the class {value.__module__}.{value.__qualname__} into JSON data: "
                        "return an instance, or data")
    if hasattr(value, "model_dump"):  # a pydantic model
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value):  # its fields, each turned by json (asdict would deep-copy them)
        return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    raise TypeError(f"cannot turn {type(value).__module__}.{type(value).__qualname__} into JSON data: return "
                    "None, a str, bytes, a number, a bool, a list or dict of those, or an Event")


def new_event(type: str, source: str, data: Any = None, **attributes: Any) -> Event:
    """A fresh event with a new id and the current time."""
    attrs: dict[str, Any] = {
        "specversion": "1.0", "id": str(uuid.uuid4()), "source": source, "type": type,
        "time": format_time(datetime.now(UTC)),
    }
    attrs.update({k: v for k, v in attributes.items() if v is not None})
    if data is not None and "datacontenttype" not in attrs:
        attrs["datacontenttype"] = "application/json" if not isinstance(data, bytes) else (
            "application/octet-stream")
    return Event(attrs, encode_data(data, attrs.get("datacontenttype")))


def format_time(value: datetime) -> str:
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class RawDataFormat(JSONFormat):
    """The SDK's JSON format, except that binary-mode bodies pass through as bytes."""

    def read_data(self, body: bytes, datacontenttype: str | None) -> bytes | None:
        return bytes(body) if body else None

    def write_data(self, data: Any, datacontenttype: str | None) -> bytes:
        return data if isinstance(data, bytes) else super().write_data(data, datacontenttype)


RAW_FORMAT = RawDataFormat()


def check_required(attributes: Mapping[str, Any]) -> None:
    """The SDK fills in a missing id and specversion; an ingress must refuse them instead."""
    for name in REQUIRED:
        value = attributes.get(name)
        if value is None:
            raise InvalidEvent(f"missing required attribute {name!r}", name)
        if not isinstance(value, str) or not value:
            raise InvalidEvent(f"attribute {name!r} must be a non-empty string, got {value!r}", name)
    if attributes["specversion"] != "1.0":
        raise InvalidEvent(
            f"unsupported specversion {attributes['specversion']!r}: fmesh accepts '1.0'", "specversion")


def check_extensions(attributes: Mapping[str, Any]) -> None:
    """Types CloudEvents allows, and strings that are valid Unicode (a lone surrogate such as
    the JSON escape "\\ud800" parses, but cannot be stored or sent on)."""
    for name, value in attributes.items():
        if isinstance(value, str):
            check_text(value, name)
        elif isinstance(value, bool):
            continue
        elif not isinstance(value, int):
            raise InvalidEvent(
                f"attribute {name!r} has a value of type {type(value).__name__}; "
                "CloudEvents allows string, integer, boolean, binary, URI and timestamp", name)
        elif not INTEGER_MIN <= value <= INTEGER_MAX:
            raise InvalidEvent(f"attribute {name!r} is {str(value)[:40]}, outside the CloudEvents Integer range "
                               f"({INTEGER_MIN} to {INTEGER_MAX}); send it as a string", name)


# A CloudEvents Integer is 32-bit signed: a bigger one would turn into a float (or fail)
# in JSON readers downstream, so it is refused where it enters.
INTEGER_MIN, INTEGER_MAX = -(2**31), 2**31 - 1
DEFAULT_MAX_EXTENSIONS = 64


class TooManyExtensions(InvalidEvent):
    """An event with more extensions than allowed: 413 at the HTTP ingress, invalid elsewhere."""

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"event has {count} extension attributes, more than the limit of {limit}")
        self.count, self.limit = count, limit


def check_extension_count(attributes: Mapping[str, Any], limit: int) -> None:
    count = sum(1 for name in attributes if name not in CONTEXT_ATTRIBUTES)
    if count > limit:
        raise TooManyExtensions(count, limit)


CONTEXT_ATTRIBUTES = frozenset(
    {"specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time"})


def check_media_type(value: Any) -> None:
    """A datacontenttype goes out as a Content-Type header, so it must be one (RFC 9110:
    printable ASCII), or no sink could send the event on."""
    if isinstance(value, str) and not (value.isascii() and value.isprintable()):
        raise InvalidEvent(f"attribute 'datacontenttype' must be a media type in printable ASCII, got {value!r:.60}",
                           "datacontenttype")


# CloudEvents 1.0 strings may not hold the control characters U+0000-U+001F and U+007F-U+009F:
# a CR LF in an id would split the header that carries it and the lines of a log.
CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f]")


def check_no_control(attributes: Mapping[str, Any]) -> None:
    """Refuse (InvalidEvent) a string attribute holding a control character; at the edges only,
    so an event stored before this check still reads back."""
    for name, value in attributes.items():
        if isinstance(value, str) and (found := CONTROL_CHARACTER.search(value)):
            raise InvalidEvent(f"attribute {name!r} holds the control character U+{ord(found.group()):04X} at "
                               f"character {found.start()}; CloudEvents strings may not", name)


def without_control(text: str) -> str:
    """`text` fit for a string attribute: valid Unicode, each control character a space."""
    return CONTROL_CHARACTER.sub(" ", valid_text(text))


def check_text(value: str, attribute: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidEvent(f"attribute {attribute!r} is not valid Unicode: {exc.reason} at character "
                           f"{exc.start}", attribute) from None


# Extensions the mesh itself sets. Anyone may send them (a bridged event carries them),
# but only well formed: a negative hop count would let a caller lengthen a reply loop.
HOPS = "fmeshhops"
MAX_HOPS = 16          # a reply chain longer than this is a loop: its next reply is dead-lettered
# Who published an event (`peer:eu`, `token:ci`, `trigger:orders`, `function:hello`, `admin`,
# `anonymous`): set where the event enters the mesh, replacing anything a caller sent.
SENDER = "fmeshsender"
INTERNAL_COUNTS = (HOPS, "fmeshattempts", "fmesherrorcode")
MAX_COUNT_DIGITS = 9


PATH = "fmeshpath"          # the meshes an event was forwarded from (see fmesh.meshpath)
MAX_PATH = 32               # meshes on one path


def checked_internal(attributes: dict[str, Any]) -> dict[str, Any]:
    """`attributes` with the mesh's own counters as non-negative integers and its path
    a list of mesh ids; InvalidEvent naming the extension when one is anything else."""
    for name in INTERNAL_COUNTS:
        if name in attributes:
            attributes[name] = _count(name, attributes[name])
    if PATH in attributes:
        _check_path(attributes[PATH])
    return attributes


def _check_path(value: Any) -> None:
    parts = value.split(",") if isinstance(value, str) else None
    if not parts or len(parts) > MAX_PATH or not all(is_name(p) for p in parts):
        raise InvalidEvent(f"extension {PATH!r} is the mesh's own: a comma-separated list of at most "
                           f"{MAX_PATH} mesh ids, got {value!r:.60}", PATH)


def _count(name: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**MAX_COUNT_DIGITS:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= MAX_COUNT_DIGITS:
        return int(value)
    raise InvalidEvent(f"extension {name!r} is the mesh's own and must be a non-negative integer, "
                       f"got {value!r:.40}", name)


class ParsedEvent:
    """What the SDK's readers build through `strict_factory`: the attributes as sent.

    The SDK's own CloudEvent adds a `time` when there is none; an event passing
    through the mesh must keep exactly the attributes it came with.
    """

    __slots__ = ("_attributes", "_data")

    def __init__(self, attributes: dict[str, Any], data: Any) -> None:
        self._attributes = attributes
        self._data = data

    def get_attributes(self) -> dict[str, Any]:
        return self._attributes

    def get_data(self) -> Any:
        return self._data


_PLACEHOLDER_TIME = datetime(1970, 1, 1, tzinfo=UTC)


def strict_factory(attributes: dict[str, Any], data: Any) -> ParsedEvent:
    """Event factory for the SDK's readers: refuse what the SDK would silently default."""
    attributes = {k: v for k, v in attributes.items() if v is not None}
    check_required(attributes)
    try:
        SdkEvent({"time": _PLACEHOLDER_TIME, **attributes}, None)  # the SDK's validation
    except CloudEventValidationError as exc:
        raise InvalidEvent(describe_validation_error(exc), first_attribute(exc)) from exc
    return ParsedEvent(attributes, data)


def describe_validation_error(exc: CloudEventValidationError) -> str:
    return "; ".join(str(error) for errors in exc.errors.values() for error in errors)


def first_attribute(exc: CloudEventValidationError) -> str | None:
    return next(iter(exc.errors), None)


def from_sdk(event: BaseCloudEvent, max_extensions: int = DEFAULT_MAX_EXTENSIONS) -> Event:
    """An event read at the edge of the mesh, checked: what it carries can be stored and sent on."""
    attributes: dict[str, Any] = {}
    for name, value in event.get_attributes().items():
        if value is None:
            continue
        attributes[name] = format_time(value) if isinstance(value, datetime) else value
    check_extension_count(attributes, max_extensions)
    check_extensions(attributes)
    check_no_control(attributes)
    check_media_type(attributes.get("datacontenttype"))
    checked_internal(attributes)
    check_trace_attributes(attributes)
    try:
        payload = encode_data(event.get_data(), attributes.get("datacontenttype"))
    except UnicodeEncodeError as exc:
        raise InvalidEvent(f"attribute 'data' is not valid Unicode: {exc.reason}", "data") from None
    return Event(attributes, payload or None)  # empty data is no data: binary mode cannot tell them apart


def to_sdk(event: Event) -> ParsedEvent:
    """An event the SDK's writers take, carrying the payload bytes (use RAW_FORMAT). `time`
    stays the string it arrived as: the writers put a string on the wire unchanged."""
    return ParsedEvent(dict(event.attributes), event.payload)


def to_sdk_decoded(event: Event) -> ParsedEvent:
    """Like `to_sdk`, with the data decoded, for structured mode (JSON data stays JSON)."""
    sdk = to_sdk(event)
    return ParsedEvent(sdk.get_attributes(), event.data if event.payload is not None else None)


RFC3339 = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
                     r"(?:[Zz]|[+-]([0-9]{2}):([0-9]{2}))")  # ASCII digits only: \d takes any script's


def checked_time(value: Any) -> str:
    """`time` exactly as the producer wrote it, once it is an RFC 3339 timestamp: any
    precision, any offset, and the leap second 23:59:60 that datetime cannot hold."""
    match = RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None or not _in_range(match):
        raise InvalidEvent(f"attribute 'time' is not an RFC 3339 timestamp: {value!r:.60}", "time")
    return value


def _in_range(match: re.Match[str]) -> bool:
    year, month, day, hour, minute, second = (int(match[i]) for i in range(1, 7))
    offset_ok = match[8] is None or (int(match[8]) <= 23 and int(match[9]) <= 59)
    if not 1 <= month <= 12:
        return False
    days = 29 if month == 2 and calendar.isleap(year) else DAYS_IN_MONTH[month - 1]
    return 1 <= day <= days and hour <= 23 and minute <= 59 and second <= 60 and offset_ok


DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def with_extension(event: Event, **extensions: Any) -> Event:
    return Event({**event.attributes, **extensions}, event.payload)


# The extensions a dead letter carries about its failure (see runtime.sidecar).
ERROR_EXTENSIONS = ("fmesherrordest", "fmesherrorcode", "fmesherrordata", "fmeshattempts")


def without_error_context(event: Event) -> Event:
    """The event as it was before it failed: for replaying a dead letter."""
    return Event({k: v for k, v in event.attributes.items() if k not in ERROR_EXTENSIONS}, event.payload)


def ordering_key(event: Event) -> str | None:
    """The key ordered delivery keeps in sequence: the `partitionkey` extension."""
    key = event.attributes.get("partitionkey")
    return None if key is None else str(key)


def dump_attributes(attributes: dict[str, Any]) -> bytes:
    """Compact JSON of attributes (str, int, bool): orjson, which is several times faster on
    this hot path, unless an integer is too big for it."""
    try:
        return orjson.dumps(attributes)
    except TypeError:
        return json.dumps(attributes, separators=(",", ":")).encode()


def load_attributes(data: bytes | str) -> dict[str, Any]:
    return orjson.loads(data)


def to_record(event: Event) -> tuple[bytes, bytes | None]:
    """Storage form: attributes as compact JSON, payload as-is."""
    return dump_attributes(event.attributes), event.payload


def from_record(attributes: bytes | str, payload: bytes | None) -> Event:
    return Event(load_attributes(attributes), payload)


UNDECODABLE_TYPE = "dev.fmesh.undecodable"


def from_record_or_stub(attributes: bytes | str, payload: bytes | None, where: str) -> tuple[Event, str | None]:
    """A stored event, and None; or, for a record that cannot be read back (corrupt, or
    written by an older mesh that let a lone surrogate in), the best event that can be
    made of it and why, so that it can be dead-lettered instead of failing every read."""
    try:
        event = from_record(attributes, payload)
        check_required(event.attributes)
        check_extensions(event.attributes)
        return event, None
    except (ValueError, TypeError, AttributeError) as exc:
        reason = f"stored event {where} cannot be decoded: {exc}"
    try:
        salvaged = json.loads(attributes)  # the stdlib reads lone surrogates, orjson does not
    except (ValueError, TypeError):
        salvaged = None
    if isinstance(salvaged, dict):
        fixed = {valid_text(str(k)): valid_text(v) if isinstance(v, str) else v for k, v in salvaged.items()}
        fixed = {k: v for k, v in fixed.items() if isinstance(v, bool | int | str)}
        if all(isinstance(fixed.get(name), str) and fixed[name] for name in REQUIRED):
            return Event(fixed, payload), reason
    raw = attributes if isinstance(attributes, bytes) else attributes.encode("utf-8", "surrogateescape")
    stub = {"specversion": "1.0", "id": f"undecodable-{where.replace(' ', '-')}", "source": "/fmesh/store",
            "type": UNDECODABLE_TYPE, "datacontenttype": "application/octet-stream"}
    return Event(stub, raw + b"\n" + (payload or b"")), reason


def valid_text(text: str) -> str:
    """`text` with anything that is not valid Unicode (lone surrogates) replaced by '?'."""
    return text.encode("utf-8", "replace").decode("utf-8")
