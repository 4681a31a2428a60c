"""What an HTTP sink makes of a response, as Knative's dispatcher does.

2xx is success, and a 2xx that is itself a CloudEvent (binary or structured) is a reply.
Connection errors, timeouts, 5xx, 404, 408, 409 and 429 are worth retrying (honouring
`Retry-After`, in seconds or as an HTTP date); any other status is not.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime

from fmesh.bindings.http import read_events
from fmesh.errors import HandlerError, InvalidEvent
from fmesh.events import Event

RETRYABLE_STATUSES = frozenset({404, 408, 409, 429})
ERROR_BODY_BYTES = 1024


def is_retryable(status: int) -> bool:
    return status >= 500 or status in RETRYABLE_STATUSES


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent or bad."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def failure(url: str, status: int, headers: Mapping[str, str], body: bytes) -> HandlerError:
    """The error for a non-2xx answer, with the start of the body to say why."""
    excerpt = body_excerpt(body)
    message = f"POST {url} answered {status}" + (f": {excerpt}" if excerpt else "")
    retryable = is_retryable(status)
    wait = retry_after(headers.get("retry-after")) if retryable else None
    return HandlerError(message, status=status, retryable=retryable, retry_after=wait)


def body_excerpt(body: bytes) -> str:
    """The start of an error body as text (a character cut at its end left out); a body that
    is mostly not UTF-8 (a gzip, an image) is named as such, not shown as a run of U+FFFD."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    text = decoder.decode(body[:ERROR_BODY_BYTES], final=len(body) <= ERROR_BODY_BYTES)
    if text.count("\ufffd") > len(text) // 4:
        return "a body that is not UTF-8 text"
    return text.strip()


def is_cloudevent(headers: Mapping[str, str]) -> bool:
    if any(name.startswith("ce-") for name in headers):
        return True
    return headers.get("content-type", "").lower().startswith("application/cloudevents")


def reply(url: str, status: int, headers: Mapping[str, str], body: bytes) -> Event | None:
    """The CloudEvent in a 2xx answer, or None; headers have lowercase names."""
    if not is_cloudevent(headers):
        return None
    try:
        events = read_events(dict(headers), body)
    except InvalidEvent as exc:
        raise HandlerError(f"POST {url} replied with an invalid CloudEvent: {exc}", status=status,
                           retryable=False) from exc
    if len(events) != 1:
        raise HandlerError(f"POST {url} replied with a batch of {len(events)} events; "
                           "a reply must be a single event", status=status, retryable=False)
    return events[0]


def outcome(url: str, status: int, headers: Mapping[str, str], body: bytes) -> Event | None:
    """The reply of a successful answer; raises HandlerError for any other."""
    if 200 <= status < 300:
        return reply(url, status, headers, body)
    raise failure(url, status, headers, body)
