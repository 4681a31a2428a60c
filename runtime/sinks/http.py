"""The HTTP sink: POST each event to a URL (binary mode unless structured is asked for).

One keep-alive `httpx.AsyncClient` per sink. The URL may carry `?structured` (or
`structured=true`), which is taken off before sending.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
from fmesh.broker.ingress import DEFAULT_MAX_EVENT_BYTES
from fmesh.runtime.sinks.base import SinkOptions
from fmesh.runtime.sinks.responses import ERROR_BODY_BYTES, outcome
from fmesh.triggers.config import read_secret

from fmesh.bindings.common import describe
from fmesh.bindings.http import write_binary, write_structured
from fmesh.errors import BrokerUnreachable, HandlerError
from fmesh.events import Event
from fmesh.tls import client_context
from fmesh.tracing import hop_headers

TRUE = {"", "1", "true", "yes"}
MAX_CONNECTIONS = 100
MAX_ANSWER_BYTES = DEFAULT_MAX_EVENT_BYTES  # what the ingress takes by default (fmesh up --max-event-bytes)


def split_structured(url: str) -> tuple[str, bool]:
    """The URL without a `structured` query parameter, and whether it asked for it."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    flags = [value for name, value in query if name == "structured"]
    if not flags:
        return url, False
    rest = [(name, value) for name, value in query if name != "structured"]
    structured = flags[-1].lower() in TRUE
    return urlunsplit(parts._replace(query=urlencode(rest))), structured


def verification(options: SinkOptions, field: str) -> ssl.SSLContext | bool:
    """How to check the server's certificate (the system CAs, `tls.ca` or `tls_ca`), and the
    client certificate to show it (`tls.cert`, `tls.key`)."""
    tls = options.tls
    ca = (tls.ca if tls is not None else None) or options.tls_ca
    return client_context(ca, tls.cert if tls else None, tls.key if tls else None, f"{field}: tls")


class HttpSink:
    """`Sink` that POSTs events; 2xx CloudEvent answers come back as reply events."""

    def __init__(self, url: str, options: SinkOptions, transport: httpx.AsyncBaseTransport | None = None,
                 max_answer_bytes: int = MAX_ANSWER_BYTES) -> None:
        """`transport`: httpx's own by default (a test gives an `httpx.MockTransport`);
        `max_answer_bytes`: the most of an answer read, the mesh's event limit."""
        self.max_answer_bytes = max_answer_bytes
        self.url, structured = split_structured(url)
        self.structured = structured or options.structured
        self._headers = dict(options.headers)
        if options.bearer_env:
            token = read_secret(options.bearer_env, f"sink {self.url}: bearer_env")
            self._headers["authorization"] = f"Bearer {token}"
        self._verify = verification(options, f"sink {self.url}")
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                verify=self._verify, follow_redirects=False, trust_env=False, transport=self._transport,
                limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS))

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def invoke(self, event: Event, timeout: float) -> Event | None:
        headers, body = self.encode(event)
        return await self.post({**hop_headers(event), **headers}, body, timeout)

    def encode(self, event: Event) -> tuple[dict[str, str], bytes]:
        """Headers and body of `event` as this sink sends it (binary or structured mode)."""
        return write_structured(event) if self.structured else write_binary(event)

    async def get_json(self, url: str, timeout: float) -> object:
        """The JSON a GET of `url` answers with, or None if it does not (best effort)."""
        if self._client is None:
            await self.start()
        assert self._client is not None
        try:
            response = await self._client.get(url, headers=self._headers, timeout=timeout)
            return response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ssl.SSLError, ValueError, AttributeError):  # AttributeError: see `post`
            return None

    async def post(self, headers: dict[str, str], body: bytes, timeout: float, replies: bool = True) -> Event | None:
        """POST an encoded event; the outcome classified as Knative's dispatcher does. With
        `replies` off, any 2xx is success and its body is not read as a reply event."""
        if self._client is None:
            await self.start()
        assert self._client is not None
        try:
            # httpx's timeout bounds each read: a server sending a byte a second never meets
            # it. The attempt's timeout is for all of it, the answer's body included.
            async with asyncio.timeout(timeout):
                status, answer_headers, answer = await self._exchange({**self._headers, **headers}, body,
                                                                      timeout, replies)
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise HandlerError(f"POST {self.url} timed out after {timeout:g}s", retryable=True) from exc
        except (httpx.TransportError, ssl.SSLError) as exc:
            # A TLS 1.3 server refuses a client certificate after the handshake: httpx then lets
            # the ssl module's error through as it is. Either way the far side may be fixed.
            raise HandlerError(str(BrokerUnreachable(self.url, describe(exc))), retryable=True) from exc
        except AttributeError as exc:
            # anyio (4.16, on uvloop) asks a socket the far side reset just as it was opened for
            # its peer's address, and fails on the socket being gone already. Nothing in an
            # event gets this far, so it is a connection error: retried, not a dead letter.
            raise HandlerError(str(BrokerUnreachable(self.url, f"connection reset as it opened ({exc})")),
                               retryable=True) from exc
        if not replies and 200 <= status < 300:
            return None
        return outcome(self.url, status, answer_headers, answer)

    async def _exchange(self, headers: dict[str, str], body: bytes, timeout: float,
                        replies: bool) -> tuple[int, httpx.Headers, bytes]:
        """The answer's status, headers and body, read up to `max_answer_bytes`: a reply is an
        event as big as the ingress takes at most, and of an error body only the excerpt its
        error shows is read."""
        assert self._client is not None
        async with self._client.stream("POST", self.url, headers=headers, content=body, timeout=timeout) as response:
            ok = 200 <= response.status_code < 300
            if ok and not replies:
                return response.status_code, response.headers, b""
            limit = self.max_answer_bytes if ok else ERROR_BODY_BYTES + 1  # an error's excerpt, and whether it was cut
            answer = bytearray()
            async for chunk in response.aiter_bytes():
                answer += chunk
                if len(answer) <= limit:
                    continue
                if ok:
                    raise HandlerError(f"POST {self.url} answered {response.status_code} with more than "
                                       f"{limit} bytes: too big for a reply event", retryable=False)
                return response.status_code, response.headers, bytes(answer[:limit])
            return response.status_code, response.headers, bytes(answer)
