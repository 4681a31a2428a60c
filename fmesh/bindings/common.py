"""Pieces every wire binding of the triggers and sinks shares.

`wrapped_event` builds the event for a message that is not a CloudEvent;
`reading` turns what the SDK raises on a bad message into `InvalidEvent`;
`describe` puts a client library's error on one line for status and error messages.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from fmesh.bindings.json_format import TOO_DEEP
from fmesh.errors import InvalidEvent
from fmesh.events import Event, format_time

INVALID_EXTENSION = "fmeshinvalid"
INVALID_REASON_CHARS = 200


def wrapped_event(*, id: str, source: str, type: str, payload: bytes | None,
                  content_type: str | None = None, time: datetime | None = None,
                  subject: str | None = None, **extensions: Any) -> Event:
    """The event that carries a foreign message: its bytes untouched as the payload."""
    attributes: dict[str, Any] = {"specversion": "1.0", "id": id, "source": source, "type": type,
                                  "time": format_time(time or datetime.now(UTC))}
    if content_type:
        attributes["datacontenttype"] = content_type
    if subject:
        attributes["subject"] = subject
    attributes.update({k: v for k, v in extensions.items() if v is not None})
    return Event(attributes, payload if payload else None)


def marked_invalid(event: Event, error: InvalidEvent) -> Event:
    """`event` with an extension saying why the message could not be read as a CloudEvent."""
    reason = str(error)[:INVALID_REASON_CHARS]
    return Event({**event.attributes, INVALID_EXTENSION: reason}, event.payload)


def text_or_base64(value: bytes) -> str:
    """Bytes as an extension value: UTF-8 text when they are, else base64."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(value).decode("ascii")


def from_millis(millis: int | None) -> datetime | None:
    return None if millis is None or millis < 0 else datetime.fromtimestamp(millis / 1000, UTC)


def canonical(value: Any) -> str:
    """An attribute value's canonical CloudEvents string (booleans are `true`/`false`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def canonical_booleans(sdk_event: Any) -> Any:
    """Booleans as CloudEvents spells them in headers; the SDK would write Python's `True`."""
    attributes = sdk_event.get_attributes()
    for name, value in attributes.items():
        if isinstance(value, bool):
            attributes[name] = canonical(value)
    return sdk_event


@contextmanager
def reading(what: str) -> Iterator[None]:
    """Translate the errors of reading `what` as a CloudEvent into `InvalidEvent`."""
    try:
        yield
    except InvalidEvent as exc:
        raise InvalidEvent(f"{what}: {exc}", exc.attribute) from exc
    except json.JSONDecodeError as exc:
        raise InvalidEvent(f"{what}: body is not valid JSON: {exc.msg} at line {exc.lineno} "
                           f"column {exc.colno}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"{what}: not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    except RecursionError as exc:
        raise InvalidEvent(f"{what}: {TOO_DEEP}") from exc
    except (ValueError, TypeError, AttributeError, KeyError, OverflowError) as exc:
        raise InvalidEvent(f"{what}: not a valid CloudEvent: {exc or type(exc).__name__}") from exc


def as_invalid(error: Exception, what: str) -> InvalidEvent:
    """Any failure to read a message as a CloudEvent, as the InvalidEvent it amounts to."""
    return error if isinstance(error, InvalidEvent) else InvalidEvent(f"{what}: cannot be read: {describe(error)}")


def describe(error: BaseException) -> str:
    """A library error as one line: its class and message."""
    text = str(error).strip()
    name = type(error).__name__
    return f"{name}: {text}" if text and not text.startswith(name) else text or name
