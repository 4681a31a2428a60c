"""The one exception tree of fmesh.

FmeshError                       root of every error fmesh raises on purpose
├── InvalidEvent(ValueError)     an event that breaks the CloudEvents spec (HTTP 400)
├── EventTooLarge(ValueError)    an event past the configured size limit (HTTP 413)
├── UnsupportedContentType       a body fmesh cannot read as a CloudEvent (HTTP 415)
├── StoreError(OSError)          the event log could not store or read (HTTP 503)
├── BrokerUnreachable(ConnectionError)  a mesh, broker or sink URL did not answer
│   └── NotAMesh                 a URL given as a mesh answered, but not as fmesh does
├── ClientGone(ConnectionError)  the client left (or was timed out) before its request body ended
├── ManifestError(ValueError)    a manifest that does not validate (file, line, field)
├── TriggerConfigError(ValueError)  a trigger or sink that cannot be built (a missing secret)
├── DeployError                  the mesh refused or failed a deploy
├── AuthError(PermissionError)   a missing or wrong token, signature or certificate (HTTP 401)
├── Forbidden(PermissionError)   a known caller asking for what it may not do (HTTP 403)
├── RateLimited                  a caller past its rate limit; `retry_after` seconds (HTTP 429)
├── StartupError(OSError)        `fmesh up` cannot start: data dir in use, port taken, no settings
└── HandlerError(RuntimeError)   a function failed to handle an event
    └── HandlerTimeout(TimeoutError)
"""

from __future__ import annotations

from typing import Any


class FmeshError(Exception):
    """Root of all errors fmesh raises on purpose."""


class InvalidEvent(FmeshError, ValueError):
    """An event that is not a valid CloudEvent; `attribute` names what is wrong."""

    def __init__(self, message: str, attribute: str | None = None) -> None:
        super().__init__(message)
        self.attribute = attribute


class EventTooLarge(FmeshError, ValueError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"event of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class HeadersTooLarge(FmeshError, ValueError):
    """431: the request's header section is past a limit (bytes or count)."""


class UnsupportedContentType(FmeshError, ValueError):
    def __init__(self, content_type: str) -> None:
        super().__init__(
            f"cannot read content type {content_type!r} as a CloudEvent: send binary mode "
            "(ce-* headers) or structured mode (application/cloudevents+json)"
        )
        self.content_type = content_type


class StoreError(FmeshError, OSError):
    """The event log failed; nothing was acknowledged."""


class Backlogged(StoreError):
    """Refused whole: a subscription the events route to already holds its bound of waiting
    deliveries (see broker/backlog.py). Senders should retry after `retry_after` seconds."""

    def __init__(self, subscription: str, waiting: int, limit: int, retry_after: float = 1.0) -> None:
        events = "event" if waiting == 1 else "events"
        super().__init__(f"{subscription} has {waiting:,} {events} waiting, its bound (--max-backlog {limit}); "
                         f"retry after {retry_after:g}s")
        self.subscription = subscription
        self.waiting = waiting
        self.limit = limit
        self.retry_after = retry_after


class Conflict(FmeshError):
    """A compare-and-set on state lost: the key exists, is gone, or moved on meanwhile."""


class ClientGone(FmeshError, ConnectionError):
    """The client disconnected, or was cut off as too slow, in the middle of its request body:
    what came of the body is not the request, and there is nobody left to answer."""

    def __init__(self, received: int) -> None:
        super().__init__(f"the client left after {received} bytes of its request body")
        self.received = received


class BrokerUnreachable(FmeshError, ConnectionError):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach {url}: {reason}")
        self.url = url
        self.reason = reason


class NotAMesh(BrokerUnreachable):
    """What answered at a mesh's URL is some other server (a web server's 404 page, say)."""

    def __init__(self, url: str, what: str) -> None:
        FmeshError.__init__(self, f"{url} is not an fmesh mesh: {what}, not the fmesh API's JSON; is the URL "
                                  "(--mesh or FMESH_URL) right, and the port that of `fmesh up`?")
        self.url = url
        self.reason = what

    @classmethod
    def answered(cls, url: str, response: Any) -> NotAMesh:
        """From the `httpx.Response` that gave it away: what was asked, what came back, from what."""
        kind = response.headers.get("content-type", "no content type").split(";")[0].strip()
        server = response.headers.get("server")
        by = f" from {server}" if server else ""
        request = response.request
        return cls(url, f"{request.method} {request.url.path} got {response.status_code} ({kind}){by}")


class ManifestError(FmeshError, ValueError):
    """A manifest problem, located as `file:line` with the dotted field path."""

    def __init__(self, file: str, line: int | None, field: str, problem: str) -> None:
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {field}: {problem}" if field else f"{where}: {problem}")
        self.file = file
        self.line = line
        self.field = field
        self.problem = problem


class TriggerConfigError(FmeshError, ValueError):
    """A trigger or sink that cannot be built as configured; `field` is the dotted path at fault."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class DeployError(FmeshError):
    """The mesh refused or failed a deploy."""


class AuthError(FmeshError, PermissionError):
    """A missing or wrong bearer token, HMAC signature or client certificate."""


class Forbidden(FmeshError, PermissionError):
    """The caller is known, and what it asked for is not allowed to it."""


class RateLimited(FmeshError):
    """The caller is past its rate limit; it may try again in `retry_after` seconds."""

    def __init__(self, who: str, retry_after: float) -> None:
        super().__init__(f"{who} is over its rate limit: try again in {retry_after:.3g}s")
        self.who = who
        self.retry_after = retry_after


class StartupError(FmeshError, OSError):
    """`fmesh up` cannot start: its data dir belongs to another process, its port is taken,
    or it got no settings. The message says which, in one line."""


class HandlerError(FmeshError, RuntimeError):
    """A function failed to handle an event; `status` is an HTTP-like code when known."""

    def __init__(self, message: str, status: int | None = None, retryable: bool = True,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


class HandlerTimeout(HandlerError, TimeoutError):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"handler did not finish within {seconds:g}s", status=None)
        self.seconds = seconds
