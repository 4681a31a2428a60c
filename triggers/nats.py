"""The NATS trigger: a core subscription or a durable JetStream consumer.

Core NATS is at-most-once by nature: a message is published (retrying while the event
log refuses it) but cannot be asked for again. JetStream messages are acked only after
their batch is durably published; when the event log refuses a batch they are nak'ed
with a delay and come back. nats-py reconnects by itself, forever; the trigger reports
"retrying" with the server URL while it is cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from fmesh.triggers.base import Publish, StatusTracker
from fmesh.triggers.config import JetStreamConfig, NatsTriggerConfig
from fmesh.triggers.nats_client import connect_options
from fmesh.triggers.retry import BackgroundTrigger, Backoff, publish_until_stored
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import SlowConsumerError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from fmesh.bindings.common import as_invalid, describe, wrapped_event
from fmesh.bindings.nats import content_type, read_message
from fmesh.errors import BrokerUnreachable, StoreError, TriggerConfigError
from fmesh.events import Event
from fmesh.tracecontext import message_context

FETCH_WAIT = 1.0
CLOSE_TIMEOUT = 5.0
DELIVER = {"all": DeliverPolicy.ALL, "new": DeliverPolicy.NEW, "last": DeliverPolicy.LAST}


class NatsTrigger(BackgroundTrigger):
    """`Trigger` over one NATS subject."""

    kind = "nats"

    def __init__(self, name: str, config: NatsTriggerConfig, publish: Publish, shared: bool = False) -> None:
        self.name = name
        self.config = config
        # Every node on a shared store runs the trigger: a queue group (one of its own unless
        # the manifest names one) makes each message arrive at one node, not at each.
        self.queue = config.queue or (f"fmesh-{re.sub(r'[^A-Za-z0-9_-]', '_', name)}" if shared else None)
        self._publish = publish
        field = f"triggers.{name}.nats"
        self._options = connect_options(config, field, f"fmesh-trigger-{name}")
        if config.credentials is not None:
            require_nkeys(f"{field}.credentials")
        self._source = "nats://" + ",".join(urlsplit(url).netloc for url in config.url)
        self._durable = (config.jetstream.durable if config.jetstream and config.jetstream.durable
                         else "fmesh-" + re.sub(r"[^A-Za-z0-9_-]", "_", name))
        self._status = StatusTracker(name, self.kind)
        self._status.detail.update(subject=config.subject, queue=self.queue)
        if config.jetstream:
            self._status.detail.update(durable=self._durable, stream=config.jetstream.stream)
        self._backoff = Backoff(config.retry_delay, config.retry_max_delay)
        self._task: asyncio.Task | None = None
        self._stopping = False

    def _description(self) -> str:
        return f"nats trigger {self.name} ({self.config.display_url})"

    def _restart_backoff(self) -> Backoff:
        return Backoff(self.config.retry_delay, self.config.retry_max_delay)

    async def start(self) -> None:
        self._stopping = False
        await super().start()

    async def stop(self) -> None:
        self._stopping = True
        await super().stop()

    # -- the connection ------------------------------------------------------------------

    async def _run(self) -> None:
        client = Client()
        try:
            await client.connect(**self._options, error_cb=self._on_error,
                                 disconnected_cb=self._on_disconnected, reconnected_cb=self._on_reconnected)
            self._status.connected()
            await self._consume_forever(client)
        finally:
            await self._close(client)

    async def _consume_forever(self, client: Client) -> None:
        backoff = Backoff(self.config.retry_delay, self.config.retry_max_delay)
        while True:
            try:
                await self._consume(client)
            except (NatsError, OSError, TimeoutError) as exc:
                self._status.detail["subscribed"] = False
                self._status.retrying(f"{self.config.display_url}: {describe(exc)}")
                await backoff.wait()

    async def _close(self, client: Client) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await asyncio.shield(client.close())
        except (NatsError, OSError, TimeoutError):
            pass

    async def _on_error(self, error: Exception) -> None:
        if isinstance(error, SlowConsumerError):
            self._status.count("dropped")  # core NATS drops what a slow subscriber cannot take
            return
        if not self._stopping:
            self._status.retrying(str(BrokerUnreachable(self.config.display_url, describe(error))))

    async def _on_disconnected(self) -> None:
        if not self._stopping:
            self._status.retrying(str(BrokerUnreachable(self.config.display_url, "disconnected; reconnecting")))

    async def _on_reconnected(self) -> None:
        self._status.connected()

    # -- consuming -----------------------------------------------------------------------

    async def _consume(self, client: Client) -> None:
        jetstream = self.config.jetstream
        if jetstream is None:
            await self._consume_core(client)
        elif jetstream.mode == "pull":
            await self._consume_pull(client, jetstream)
        else:
            await self._consume_push(client, jetstream)

    async def _consume_core(self, client: Client) -> None:
        inbox: asyncio.Queue[Msg] = asyncio.Queue(maxsize=self.config.batch_size * 4)
        subscription = await client.subscribe(self.config.subject, queue=self.queue or "", cb=inbox.put)
        async with unsubscribing(client, subscription):
            await self._subscribed(client)
            while True:
                messages = await take(inbox, self.config.batch_size)
                await publish_until_stored(self._publish, self._events(messages), self._backoff,
                                           self._store_failed)
                self._received(messages)

    async def _consume_pull(self, client: Client, jetstream: JetStreamConfig) -> None:
        subscription = await client.jetstream().pull_subscribe(
            self.config.subject, self._durable, stream=jetstream.stream,
            config=self._consumer_config(jetstream))
        async with unsubscribing(client, subscription):
            await self._subscribed(client)
            while True:
                try:
                    messages = await subscription.fetch(jetstream.batch_size, timeout=FETCH_WAIT)
                except NatsTimeout:
                    continue
                await self._publish_then_ack(messages)

    async def _consume_push(self, client: Client, jetstream: JetStreamConfig) -> None:
        inbox: asyncio.Queue[Msg] = asyncio.Queue(maxsize=jetstream.batch_size * 4)
        subscription = await client.jetstream().subscribe(
            self.config.subject, queue=self.queue, cb=inbox.put, durable=self._durable,
            stream=jetstream.stream, config=self._consumer_config(jetstream), manual_ack=True)
        async with unsubscribing(client, subscription):
            await self._subscribed(client)
            while True:
                await self._publish_then_ack(await take(inbox, jetstream.batch_size))

    async def _subscribed(self, client: Client) -> None:
        """Once the server has the subscription (flushed), say so in the status."""
        await client.flush()
        self._status.connected()
        self._status.detail["subscribed"] = True

    def _consumer_config(self, jetstream: JetStreamConfig) -> ConsumerConfig:
        return ConsumerConfig(durable_name=self._durable, ack_policy=AckPolicy.EXPLICIT,
                              ack_wait=jetstream.ack_wait, deliver_policy=DELIVER[jetstream.deliver],
                              filter_subject=self.config.subject,
                              deliver_group=self.queue if jetstream.mode == "push" else None)

    async def _publish_then_ack(self, messages: list[Msg]) -> None:
        """Ack only what is stored; on a refusal, nak with a delay so JetStream redelivers."""
        try:
            await self._publish(self._events(messages))
        except StoreError as exc:
            delay = self._backoff.next_delay()
            self._store_failed(exc)
            for message in messages:
                await message.nak(delay=delay)
            await asyncio.sleep(delay)
            return
        self._backoff.reset()
        for message in messages:
            await message.ack()
        self._received(messages)
        self._status.set_lag(messages[-1].metadata.num_pending)

    def _received(self, messages: list[Msg]) -> None:
        self._status.connected()
        self._status.received(len(messages))

    def _store_failed(self, error: StoreError) -> None:
        self._status.retrying(f"event log refused messages from {self.config.display_url}: {error}")

    # -- messages to events --------------------------------------------------------------

    def _events(self, messages: list[Msg]) -> list[Event]:
        return [self._to_event(message) for message in messages]

    def _to_event(self, message: Msg) -> Event:
        try:
            event = read_message(message.headers, message.data, f"message on {message.subject}")
        except Exception as exc:  # noqa: BLE001 - one bad message must not stop the trigger
            return self._status.invalid(self._wrap(message), as_invalid(exc, f"message on {message.subject}"))
        return event if event is not None else self._wrap(message)

    def _wrap(self, message: Msg) -> Event:
        """A plain message as an event: id from the stream sequence (JetStream) or a UUID."""
        time, id = None, str(uuid.uuid4())
        if self.config.jetstream is not None:
            metadata = message.metadata
            id = f"{metadata.stream}-{metadata.sequence.stream}"
            time = metadata.timestamp
        return wrapped_event(id=id, source=f"{self._source}/{message.subject}", type=self.config.type,
                             payload=message.data, content_type=content_type(message.headers or {}),
                             time=time, **message_context(message.headers or {}))


@asynccontextmanager
async def unsubscribing(client: Client, subscription: Any) -> AsyncIterator[None]:
    """Drop the subscription (never the durable consumer) when consuming ends."""
    try:
        yield
    finally:
        if client.is_connected:
            with contextlib.suppress(NatsError, OSError, TimeoutError):
                await subscription.unsubscribe()


async def take(inbox: asyncio.Queue[Msg], limit: int) -> list[Msg]:
    """Wait for one message, then take whatever else is already waiting, up to `limit`."""
    messages = [await inbox.get()]
    while len(messages) < limit and not inbox.empty():
        messages.append(inbox.get_nowait())
    return messages


def require_nkeys(field: str) -> None:
    try:
        import nkeys  # noqa: F401 - only checking that it is there
    except ImportError as exc:
        raise TriggerConfigError(field, "a .creds file needs the `nkeys` package (pip install nkeys)") from exc

