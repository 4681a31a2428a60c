"""The CloudEvents HTTP binding, as pure functions over headers and body.

Reading: binary mode (`ce-*` headers), structured mode (`application/cloudevents+json`)
and batch mode (`application/cloudevents-batch+json`, all or nothing), all through the
`cloudevents` SDK. Writing: binary mode by default, structured on request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from urllib.parse import unquote, unquote_to_bytes

from cloudevents.core.bindings import http as sdk_http
from cloudevents.core.exceptions import BaseCloudEventException

from fmesh.bindings.common import canonical_booleans
from fmesh.bindings.json_format import JSON_FORMAT, check_json_payload, parse_json
from fmesh.errors import InvalidEvent, UnsupportedContentType
from fmesh.events import (
    DEFAULT_MAX_EXTENSIONS,
    RAW_FORMAT,
    Event,
    TooManyExtensions,
    checked_time,
    from_sdk,
    is_json_content_type,
    strict_factory,
    to_sdk,
    to_sdk_decoded,
)

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
CLOUDEVENTS_MEDIA = "application/cloudevents"
TIME_HEADER = "ce-time"


def media_type(headers: Mapping[str, str]) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def is_binary_mode(headers: Mapping[str, str]) -> bool:
    return any(name.startswith("ce-") for name in headers)


def read_events(headers: Mapping[str, str], body: bytes,
                max_extensions: int = DEFAULT_MAX_EXTENSIONS) -> list[Event]:
    """The events in one HTTP request; `headers` has lowercase names.

    The content type decides the mode, as the HTTP binding says: a structured request
    with a stray `ce-*` header is still structured. Raises InvalidEvent (400) naming the
    bad attribute (TooManyExtensions past `max_extensions`), UnsupportedContentType (415).
    """
    kind = media_type(headers)
    if kind == STRUCTURED:
        return [_read(lambda: JSON_FORMAT.read(strict_factory, body), max_extensions)]
    if kind == BATCH:
        return read_batch(body, max_extensions)
    if is_binary_mode(headers):
        return [read_binary(headers, body, max_extensions)]
    raise UnsupportedContentType(headers.get("content-type", "(none)"))


def read_binary(headers: Mapping[str, str], body: bytes, max_extensions: int) -> Event:
    """A binary-mode event; `time` is taken from its header as sent, not through a datetime."""
    check_percent_encoding(headers)
    others = {name: value for name, value in headers.items() if name != TIME_HEADER}
    message = sdk_http.HTTPMessage(others, body)
    event = _read(lambda: sdk_http.from_binary(message, RAW_FORMAT, strict_factory), max_extensions)
    if TIME_HEADER in headers:
        event.attributes["time"] = checked_time(unquote(headers[TIME_HEADER]))
    if is_json_content_type(event.attributes.get("datacontenttype")):
        check_json_payload(event.payload)
    return event


def utf8_attributes(headers: Mapping[str, str]) -> Mapping[str, str]:
    """Headers read from ASGI (a character per byte, Latin-1, as HTTP has it), with the `ce-*`
    values that hold raw non-ASCII bytes read as UTF-8: the HTTP binding wants such characters
    percent-encoded, but a sender that wrote them raw (Go's and Node's clients let one) meant
    UTF-8, and `café` must not be stored as `cafÃ©`. Bytes that are not UTF-8 are refused,
    naming the attribute. (httpx decodes UTF-8 itself: its callers do not need this.)"""
    if all(value.isascii() for value in headers.values()):
        return headers  # the usual case, at the cost of one pass
    read = dict(headers)
    for name, value in headers.items():
        if not value.isascii() and name.startswith("ce-"):
            read[name] = header_as_utf8(name, value, attribute=name[3:])
    return read


def header_as_utf8(name: str, value: str, attribute: str | None = None) -> str:
    """A header value read from ASGI (a character per byte) as the UTF-8 its sender meant;
    InvalidEvent naming the header (and the attribute it carries) for bytes that are not."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError) as exc:  # encode: not one character per byte
        where = f"attribute {attribute!r}: header {name}" if attribute else f"header {name}"
        hint = "; send such characters percent-encoded as UTF-8" if attribute else ""
        raise InvalidEvent(f"{where} holds bytes that are not UTF-8 ({exc.reason} at byte {exc.start}){hint}",
                           attribute) from None


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


def _read(read: Callable[[], object], max_extensions: int) -> Event:
    """What the SDK read, checked, with its errors as InvalidEvent."""
    try:
        return from_sdk(read(), max_extensions)  # type: ignore[arg-type]
    except InvalidEvent:
        raise
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"body is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    except (ValueError, TypeError, AttributeError, BaseCloudEventException) as exc:
        raise InvalidEvent(f"not a valid CloudEvent: {exc or type(exc).__name__}") from exc


def read_batch(body: bytes, max_extensions: int = DEFAULT_MAX_EXTENSIONS) -> list[Event]:
    """A JSON array of structured events; one bad event refuses the whole batch."""
    items = parse_json(body, "batch body", envelope=2)
    if not isinstance(items, list):
        raise InvalidEvent(f"a batch must be a JSON array of events, got {type(items).__name__}")
    events = []
    first_of: dict[tuple[str, str], int] = {}  # (source, id): the item that had it
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidEvent(f"batch item {index} is not a JSON object")
        try:
            event = _read(lambda item=item: JSON_FORMAT.read_object(strict_factory, item), max_extensions)
        except TooManyExtensions:
            raise  # a 413, whichever item it is
        except InvalidEvent as exc:
            raise InvalidEvent(f"batch item {index}: {exc}", exc.attribute) from exc
        # source + id name one event (CloudEvents): twice in one request is a mistake, and
        # the trail could not tell the two copies' deliveries apart
        if (earlier := first_of.setdefault((event.source, event.id), index)) != index:
            raise InvalidEvent(f"batch item {index} repeats the source and id of item {earlier} "
                               f"({event.source!r}, {event.id!r}); each event in a batch needs its own id", "id")
        events.append(event)
    return events


def write_binary(event: Event) -> tuple[dict[str, str], bytes]:
    """Headers and body of `event` in binary mode; the payload bytes go out untouched.

    An event whose `datacontenttype` is itself a CloudEvents media type goes structured
    (its payload as `data_base64`, still byte-exact): in binary mode that type would be the
    Content-Type, and the receiver would take the payload for the event."""
    if is_cloudevents_media(event.attributes.get("datacontenttype")):
        return {"content-type": STRUCTURED}, JSON_FORMAT.write(to_sdk(event))
    message = sdk_http.to_binary(canonical_booleans(to_sdk(event)), RAW_FORMAT)
    return message.headers, message.body


def is_cloudevents_media(content_type: str | None) -> bool:
    return bool(content_type) and content_type.strip().lower().startswith(CLOUDEVENTS_MEDIA)


def write_batch(events: list[Event]) -> tuple[dict[str, str], bytes]:
    """Headers and body of a batch-mode request: a JSON array of events in the JSON format,
    each payload as `data_base64`, so that the bytes arrive exactly as they left."""
    body = b"[" + b",".join(JSON_FORMAT.write(to_sdk(event)) for event in events) + b"]"
    return {"content-type": BATCH}, body


def write_structured(event: Event) -> tuple[dict[str, str], bytes]:
    message = sdk_http.to_structured(to_sdk_decoded(event), JSON_FORMAT)
    return message.headers, message.body
