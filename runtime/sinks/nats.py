"""The NATS sink: publish each event to a subject, `nats://host:port/subject[?jetstream=true]`.

Binary mode (`ce-` headers, the NATS protocol binding) unless structured is asked for.
Core publishes are flushed, so a returned `invoke` means the server has the message;
with `jetstream` the publish waits for the stream's ack and carries `Nats-Msg-Id:
<id>@<source>`, so JetStream drops a retried duplicate within its window.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qsl, urlsplit

from fmesh.runtime.sinks.base import SinkOptions
from fmesh.triggers.config import NatsConnection
from fmesh.triggers.nats_client import connect_options
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.js.errors import NoStreamResponseError

from fmesh.bindings.common import describe
from fmesh.bindings.nats import write_binary, write_structured
from fmesh.errors import BrokerUnreachable, HandlerError
from fmesh.events import Event
from fmesh.tracing import hop_headers

TRUE = {"", "1", "true", "yes"}
CLOSE_TIMEOUT = 5.0
UNREACHABLE = (NatsError, OSError, TimeoutError)


def parse_nats_url(url: str) -> tuple[str, str, bool]:
    """Server URL, subject, and whether `?jetstream` was asked for."""
    parts = urlsplit(url)
    subject = parts.path.lstrip("/")
    if parts.scheme != "nats" or not parts.netloc or not subject:
        raise ValueError(f"expected nats://host:port/subject, got {url!r}")
    if "@" in parts.netloc:
        raise ValueError(f"sink URL {url!r} carries credentials: reference them with options.nats.*_env")
    if any(token in ("*", ">") for token in subject.split(".")):
        raise ValueError(f"sink URL {url!r}: cannot publish to a wildcard subject")
    flags = [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k == "jetstream"]
    return f"nats://{parts.netloc}", subject, bool(flags) and flags[-1].lower() in TRUE


class NatsSink:
    """`Sink` publishing to one NATS subject (core, or JetStream with acks)."""

    def __init__(self, url: str, options: SinkOptions) -> None:
        self.url = url
        server, self.subject, jetstream = parse_nats_url(url)
        self.server = server
        self.jetstream = jetstream or options.jetstream
        connection = NatsConnection(url=[server], **options.nats.model_dump())
        self._options = connect_options(connection, f"sink {url}", "fmesh-sink")
        self._write = write_structured if options.structured else write_binary
        self._client: Client | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Connect now if the server answers; otherwise the first `invoke` tries again."""
        with contextlib.suppress(HandlerError):
            await self._ready(self._options["connect_timeout"])

    async def stop(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await _close(client)

    async def invoke(self, event: Event, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        client = await self._ready(timeout)
        headers, body = self._write(event)
        headers.update(hop_headers(event))  # the hop's W3C context, for an instrumented subscriber
        remaining = max(0.001, deadline - loop.time())
        try:
            if self.jetstream:
                headers["Nats-Msg-Id"] = f"{event.id}@{event.source}"
                await client.jetstream().publish(self.subject, body, timeout=remaining, headers=headers)
            else:
                await client.publish(self.subject, body, headers=headers)
                await client.flush(timeout=remaining)
        except (NoRespondersError, NoStreamResponseError) as exc:
            raise HandlerError(f"{self.url}: no JetStream stream stores subject {self.subject}",
                               retryable=True) from exc
        except UNREACHABLE as exc:
            raise HandlerError(str(BrokerUnreachable(self.url, describe(exc))), retryable=True) from exc

    async def _ready(self, timeout: float) -> Client:
        """The connection, made now if needed; nats-py keeps it alive from then on."""
        async with self._lock:
            if self._client is None or self._client.is_closed:
                client = Client()
                try:
                    async with asyncio.timeout(timeout):
                        await client.connect(**self._options, error_cb=_ignore)
                except UNREACHABLE as exc:
                    await _close(client)
                    raise HandlerError(str(BrokerUnreachable(self.url, describe(exc) or "no answer")),
                                       retryable=True) from exc
                self._client = client
            return self._client


async def _ignore(error: Exception) -> None:
    """nats-py reports each failed reconnect here; `invoke` reports what matters."""


async def _close(client: Client) -> None:
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await client.close()
    except UNREACHABLE:
        pass
