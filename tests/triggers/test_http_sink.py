"""The HTTP sink against a real HTTP server (uvicorn on a loopback port)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.utils import formatdate

import pytest
import uvicorn
from cloudevents.core.bindings import http as sdk_http
from cloudevents.core.formats.json import JSONFormat
from external import free_port
from fmesh.runtime.sinks import SinkOptions, open_sink
from fmesh.runtime.sinks.responses import body_excerpt, retry_after

from fmesh.bindings.http import write_binary, write_structured
from fmesh.errors import HandlerError
from fmesh.events import Event

EVENT = Event({"specversion": "1.0", "id": "e-1", "source": "/shop", "type": "com.shop.order",
               "time": "2024-05-01T12:00:00Z", "datacontenttype": "application/octet-stream",
               "partitionkey": "c-1"}, bytes(range(256)))


@dataclass
class Answer:
    status: int = 202
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0


@dataclass
class Seen:
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    client_port: int


class Endpoint:
    """An ASGI app that records each request and gives the next queued answer (default 202)."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.answers: deque[Answer] = deque()
        self.url = ""

    async def __call__(self, scope, receive, send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.seen.append(Seen(scope["path"], scope["query_string"].decode(), headers, body, scope["client"][1]))
        answer = self.answers.popleft() if self.answers else Answer()
        if answer.delay:
            await asyncio.sleep(answer.delay)  # a slow server, on purpose
        await send({"type": "http.response.start", "status": answer.status,
                    "headers": [(k.encode(), v.encode()) for k, v in answer.headers.items()]})
        await send({"type": "http.response.body", "body": answer.body})


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    app = Endpoint()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off", timeout_graceful_shutdown=1))
    serving = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.01)
    app.url = f"http://127.0.0.1:{port}/events"
    yield app
    server.should_exit = True
    await serving


async def test_events_are_posted_in_binary_mode_over_one_kept_alive_connection(endpoint, sinks):
    sink = await sinks(endpoint.url)
    assert await sink.invoke(EVENT, 5) is None
    assert await sink.invoke(EVENT, 5) is None
    first, second = endpoint.seen
    parsed = sdk_http.from_binary(sdk_http.HTTPMessage(first.headers, first.body), JSONFormat())
    assert (parsed.get_id(), parsed.get_type(), parsed.get_extension("partitionkey")) == (
        "e-1", "com.shop.order", "c-1")
    assert first.body == EVENT.payload and first.path == "/events"
    assert first.client_port == second.client_port


async def test_structured_mode_from_the_url_or_the_options(endpoint, sinks):
    from_url = await sinks(endpoint.url + "?structured&tenant=a")
    from_options = await sinks(endpoint.url, {"structured": True})
    await from_url.invoke(EVENT, 5)
    await from_options.invoke(EVENT, 5)
    for seen in endpoint.seen:
        assert seen.headers["content-type"] == "application/cloudevents+json"
        parsed = sdk_http.from_structured(sdk_http.HTTPMessage(seen.headers, seen.body), JSONFormat())
        assert parsed.get_data() == EVENT.payload
    assert [s.query for s in endpoint.seen] == ["tenant=a", ""]


async def test_extra_headers_and_a_bearer_token_from_the_environment(endpoint, sinks, monkeypatch):
    monkeypatch.setenv("AUDIT_TOKEN", "t0k3n")
    sink = await sinks(endpoint.url, SinkOptions(headers={"X-Tenant": "acme"}, bearer_env="AUDIT_TOKEN"))
    await sink.invoke(EVENT, 5)
    (seen,) = endpoint.seen
    assert (seen.headers["authorization"], seen.headers["x-tenant"]) == ("Bearer t0k3n", "acme")


@pytest.mark.parametrize("status,retryable", [
    (500, True), (502, True), (503, True), (404, True), (408, True), (409, True), (429, True),
    (400, False), (401, False), (403, False), (410, False), (413, False), (422, False), (301, False)])
async def test_status_classes_map_to_retryable_or_not(endpoint, sinks, status, retryable):
    endpoint.answers.append(Answer(status, body=b"nope"))
    sink = await sinks(endpoint.url)
    with pytest.raises(HandlerError) as error:
        await sink.invoke(EVENT, 5)
    assert (error.value.status, error.value.retryable) == (status, retryable)
    assert endpoint.url in str(error.value) and "nope" in str(error.value)


async def test_the_error_carries_the_first_kib_of_the_body(endpoint, sinks):
    endpoint.answers.append(Answer(500, body=b"a" * 1024 + b"TAIL"))
    sink = await sinks(endpoint.url)
    with pytest.raises(HandlerError) as error:
        await sink.invoke(EVENT, 5)
    assert "a" * 1024 in str(error.value) and "TAIL" not in str(error.value)


async def test_an_error_body_that_is_not_text_is_named_not_shown_as_replacement_characters(endpoint, sinks):
    """A gzip 410 page showed in `fmesh status` as a kilobyte of U+FFFD."""
    endpoint.answers.append(Answer(410, body=bytes(range(128, 256)) * 20))
    endpoint.answers.append(Answer(410, body=b"gone" + b"." * 1019 + "é".encode()))  # the KiB cuts é in two
    sink = await sinks(endpoint.url)
    messages = []
    for _ in range(2):
        with pytest.raises(HandlerError) as error:
            await sink.invoke(EVENT, 5)
        messages.append(str(error.value))
    assert messages[0] == f"POST {endpoint.url} answered 410: a body that is not UTF-8 text"
    assert messages[1] == f"POST {endpoint.url} answered 410: gone" + "." * 1019


@pytest.mark.parametrize("body, shown", [
    (b"hello\xff", "hello\ufffd"),                      # not cut: the bad byte is not taken for a cut character
    ("Überlastet: réessayez".encode("latin-1"), "\ufffdberlastet: r\ufffdessayez"),  # mostly text: shown
    (b"\x1f\x8b\x08\x00" + bytes(range(200, 256)), "a body that is not UTF-8 text"),  # a gzip
])
def test_an_error_excerpt_shows_what_is_text(body, shown):
    assert body_excerpt(body) == shown


async def test_retry_after_in_seconds_or_as_a_date_is_honoured(endpoint, sinks):
    endpoint.answers.append(Answer(429, {"retry-after": "7"}))
    endpoint.answers.append(Answer(503, {"retry-after": formatdate(time.time() + 120, usegmt=True)}))
    endpoint.answers.append(Answer(400, {"retry-after": "7"}))
    sink = await sinks(endpoint.url)
    waits = []
    for _ in range(3):
        with pytest.raises(HandlerError) as error:
            await sink.invoke(EVENT, 5)
        waits.append(error.value.retry_after)
    assert waits[0] == 7.0 and 100 < waits[1] <= 120 and waits[2] is None


def test_retry_after_parsing():
    assert retry_after("120") == 120.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 60) == 60.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 + 60) == 0.0
    assert retry_after("soon") is None and retry_after(None) is None


async def test_a_cloudevent_answer_is_returned_as_the_reply(endpoint, sinks):
    reply = Event({"specversion": "1.0", "id": "r-1", "source": "/audit", "type": "com.audit.done",
                   "datacontenttype": "application/json"}, b'{"ok":true}')
    for headers, body in (write_binary(reply), write_structured(reply)):
        endpoint.answers.append(Answer(200, headers, body))
    endpoint.answers.append(Answer(200, {"content-type": "application/json"}, b'{"plain": 1}'))
    sink = await sinks(endpoint.url)
    assert await sink.invoke(EVENT, 5) == reply
    assert await sink.invoke(EVENT, 5) == reply
    assert await sink.invoke(EVENT, 5) is None


async def test_a_broken_cloudevent_answer_is_not_retried(endpoint, sinks):
    endpoint.answers.append(Answer(200, {"ce-specversion": "1.0", "ce-type": "t"}, b""))
    sink = await sinks(endpoint.url)
    with pytest.raises(HandlerError) as error:
        await sink.invoke(EVENT, 5)
    assert not error.value.retryable and "invalid CloudEvent" in str(error.value)


async def test_an_unreachable_url_and_a_slow_server_are_retryable(endpoint, sinks):
    nobody = f"http://127.0.0.1:{free_port()}/events"
    sink = await sinks(nobody)
    with pytest.raises(HandlerError) as refused:
        await sink.invoke(EVENT, 5)
    assert refused.value.retryable and nobody in str(refused.value)
    endpoint.answers.append(Answer(202, delay=2))
    slow = await sinks(endpoint.url)
    with pytest.raises(HandlerError) as timeout:
        await slow.invoke(EVENT, 0.2)
    assert timeout.value.retryable and "timed out after 0.2s" in str(timeout.value)


def test_unknown_schemes_are_refused_naming_the_url():
    with pytest.raises(ValueError, match=r"ftp://example\.com/x"):
        open_sink("ftp://example.com/x")
