"""The HTTP webhook trigger: an ASGI app the node mounts at the trigger's path.

Checks run in order, each with its own status: method (405), bearer token (401),
body size (413, also past the extension count), signature (401), rate limit (429 with Retry-After), CloudEvent validity
(400), storage (503), then 202 with the event id. Nothing is published unless every
check passed.

A request that is already a CloudEvent (binary `ce-*` headers, or structured/batch
`application/cloudevents...` content) is taken as such. Any other request is wrapped:

- `type`: `type_prefix` + the value of `type_header` when the request has that header
  (`X-GitHub-Event: push` with prefix `com.github.` gives `com.github.push`), else `type`;
- `id`: the value of `id_header` (e.g. `X-GitHub-Delivery`) when present, else a UUID;
- `source`: `source`, default the path; `datacontenttype`: the request's Content-Type;
- data: the body, byte for byte.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from fmesh.triggers.base import Publish, StatusTracker, TriggerStatus
from fmesh.triggers.clock import Clock, SystemClock
from fmesh.triggers.config import HttpTriggerConfig, WebhookAuth, read_secret
from fmesh.triggers.signatures import HmacCheck, check_bearer, check_signature

from fmesh.asgi import Receive, Scope, Send, header_dict, read_body, respond
from fmesh.bindings.common import wrapped_event
from fmesh.bindings.http import header_as_utf8, is_binary_mode, is_cloudevents_media, read_events, utf8_attributes
from fmesh.bindings.json_format import check_json_payload
from fmesh.errors import AuthError, Backlogged, ClientGone, EventTooLarge, InvalidEvent, RateLimited, StoreError
from fmesh.events import Event, TooManyExtensions, is_json_content_type
from fmesh.ratelimit import retry_after_header


class WebhookTrigger:
    """`Trigger` serving one webhook path; `app` is the ASGI app to mount at `path`."""

    kind = "http"

    def __init__(self, name: str, config: HttpTriggerConfig, publish: Publish,
                 clock: Clock | None = None) -> None:
        self.name = name
        self.config = config
        self.path = config.path
        self._publish = publish
        self._clock = clock or SystemClock()
        field = f"triggers.{name}.http.auth"
        self._tokens = bearer_tokens(config.auth, field)
        self._hmac = hmac_check(config.auth, field)
        self._bucket = config.rate.bucket(self._clock.now) if config.rate is not None else None
        self._status = StatusTracker(name, self.kind)
        self._status.detail["path"] = config.path

    async def start(self) -> None:
        self._status.connected()

    async def stop(self) -> None:
        self._status.stopped()

    def status(self) -> TriggerStatus:
        return self._status.snapshot()

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app: one request in, at most one publish."""
        if self._status.state == "stopped":
            await respond(send, 503, {"error": f"trigger {self.name} is stopped"})
            return
        if scope["method"] != "POST":
            await respond(send, 405, {"error": "send webhooks with POST"}, [(b"allow", b"POST")])
            return
        headers = header_dict(scope)
        try:
            events = await self._read(scope, receive, headers)
        except ClientGone:
            return  # nobody to answer, and nothing whole to publish
        except AuthError as exc:
            await self._refuse(send, 401, "unauthorized", str(exc), self._challenge())
        except (EventTooLarge, TooManyExtensions) as exc:
            await self._refuse(send, 413, "too_large", str(exc))
        except RateLimited as exc:
            await self._refuse(send, 429, "rate_limited", str(exc),
                               [(b"retry-after", retry_after_header(exc.retry_after))])
        except InvalidEvent as exc:
            await self._refuse(send, 400, "invalid", str(exc))
        else:
            await self._accept(events, send)

    async def _read(self, scope: Scope, receive: Receive, headers: dict[str, str]) -> list[Event]:
        if self._tokens:
            check_bearer(headers, self._tokens)  # before reading: no body work for strangers
        body = await read_body(scope, receive, self.config.max_body)
        if self._hmac is not None:
            check_signature(self._hmac, headers, body, self._clock.now())
        if self._bucket is not None:
            self._bucket.admit(f"trigger {self.name}")
        events = read_events(utf8_attributes(headers), body) if is_cloudevent(headers) else [self._wrap(headers, body)]
        if self._bucket is not None:
            self._bucket.take(len(events))
        return events

    def _wrap(self, headers: Mapping[str, str], body: bytes) -> Event:
        config = self.config
        kind = _text(headers, config.type_header)
        delivery = _text(headers, config.id_header)
        content_type = _text(headers, "content-type")
        if is_json_content_type(content_type):
            check_json_payload(body)  # as the ingress does: data no replica could decode is a 400 here
        return wrapped_event(
            id=delivery.strip() if delivery and delivery.strip() else str(uuid.uuid4()),
            source=config.source or config.path,
            type=config.type_prefix + kind.strip() if kind and kind.strip() else config.type,
            payload=body, content_type=content_type)

    async def _accept(self, events: list[Event], send: Send) -> None:
        try:
            await self._publish(events)
        except Backlogged as exc:
            await self._refuse(send, 503, "backlogged", str(exc),
                               [(b"retry-after", retry_after_header(exc.retry_after))])
            return
        except StoreError as exc:
            await self._refuse(send, 503, "not_stored", f"event not stored: {exc}")
            return
        self._status.received(len(events))
        if len(events) == 1:
            await respond(send, 202, {"id": events[0].id})
        else:
            await respond(send, 202, {"accepted": len(events), "ids": [e.id for e in events]})

    async def _refuse(self, send: Send, status: int, reason: str, message: str,
                      headers: list | None = None) -> None:
        self._status.count(f"refused_{reason}")
        await respond(send, status, {"error": message}, headers)

    def _challenge(self) -> list[tuple[bytes, bytes]]:
        return [(b"www-authenticate", b'Bearer realm="fmesh"')] if self._tokens else []


def _text(headers: Mapping[str, str], name: str | None) -> str | None:
    """Header `name` as the UTF-8 text its sender wrote (`café`, not `cafÃ©`), if sent."""
    key = name.lower() if name else ""
    value = headers.get(key) if key else None
    return None if value is None else header_as_utf8(key, value)


def is_cloudevent(headers: Mapping[str, str]) -> bool:
    return is_cloudevents_media(headers.get("content-type")) or is_binary_mode(headers)


def bearer_tokens(auth: WebhookAuth | None, field: str) -> list[bytes]:
    if auth is None:
        return []
    return [read_secret(env, f"{field}.bearer_env").encode() for env in auth.bearer_env]


def hmac_check(auth: WebhookAuth | None, field: str) -> HmacCheck | None:
    if auth is None or auth.hmac_secret_env is None:
        return None
    return HmacCheck(
        secret=read_secret(auth.hmac_secret_env, f"{field}.hmac_secret_env").encode(),
        header=auth.hmac_header.lower(), algorithm=auth.hmac_algorithm, prefix=auth.prefix,
        encoding=auth.hmac_encoding,
        timestamp_header=auth.timestamp_header.lower() if auth.timestamp_header else None,
        tolerance=auth.timestamp_tolerance)
