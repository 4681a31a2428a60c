"""The NATS connection a JetStream store's log, state and blobs share, and the streams,
key/value buckets and object store of its mesh, each made on first use.

Making them is idempotent and safe when several processes race to do it: JetStream
answers a create with the same configuration with the existing resource, and one that
exists with another configuration (made by an older fmesh, or changed by hand) is used
as it is. Every library error is translated here, into `StoreError` (or `Conflict`
where a compare-and-set lost), so nothing outside this package sees a nats-py type.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import Any

import orjson
from fmesh.broker.jetstream.names import Names
from fmesh.broker.jetstream.options import JetStreamOptions, client_options
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.js.api import KeyValueConfig, PubAck, RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, BadRequestError, NoStreamResponseError, ServiceUnavailableError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from fmesh.bindings.common import describe
from fmesh.errors import StoreError
from fmesh.wording import plural

STREAM_EXISTS = 10058      # JetStream's error code: a stream of that name exists with another configuration
REQUEST_TIMEOUT = 5.0      # seconds any one request to the server may take
DUPLICATE_WINDOW = 120.0   # seconds in which JetStream drops a message whose Nats-Msg-Id it has seen
ATTEMPTS_TTL = 7 * 86400   # seconds an attempt count outlives its delivery's last retry (see log.py)
PUBLISH_TIMEOUT = 5.0      # seconds a batch of publishes may wait for its acks
READY_PATIENCE = 15.0      # seconds to wait for a JetStream (cluster) that is not ready yet
ELECTION_PATIENCE = 5.0    # seconds a write waits for its stream to have a leader (see through_election)
FAILURES = (NatsError, OSError, asyncio.TimeoutError)
Outgoing = tuple[str, bytes, str | None]   # subject, body, Nats-Msg-Id


class Engine:
    """One connection to the servers of a store URL, and the mesh's resources on them."""

    def __init__(self, options: JetStreamOptions) -> None:
        self.options = options
        self.names = Names(options.cluster)
        self.url = options.display_url
        self._connect = client_options(options)   # read now: a missing secret fails open_store
        self.last_error: str | None = None        # what the connection last went through
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._buckets: dict[str, Any] = {}
        self._making = asyncio.Lock()
        self._background: set[asyncio.Task] = set()

    @property
    def client(self) -> Client:
        if self._client is None or self._client.is_closed:
            raise StoreError(f"JetStream store {self.url} is not open")
        return self._client

    def connected(self) -> Client:
        """The client, if it is connected now: while nats-py reconnects, a write would only
        wait in its buffer, and the caller is better told at once (the ingress says 503)."""
        client = self.client
        if not client.is_connected:
            raise StoreError(f"JetStream store {self.url}: not connected (reconnecting)")
        return client

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            self._js = self.client.jetstream(timeout=REQUEST_TIMEOUT)
        return self._js

    async def open(self) -> None:
        if self._client is not None and not self._client.is_closed:
            return
        await self._connect_once()
        with self.translated("cannot make the delivery and dead-letter streams (is JetStream on: -js?)"):
            await self._until_ready(self._make_streams)

    async def _make_streams(self) -> None:
        await self.stream(self.names.deliveries, [self.names.delivery_subjects], RetentionPolicy.WORK_QUEUE)
        await self.stream(self.names.dead_letters, [self.names.dead_letter_subjects], RetentionPolicy.LIMITS)

    @staticmethod
    async def _until_ready(work: Callable[[], Awaitable[None]]) -> None:
        """Do `work`, again while JetStream is not ready yet (a cluster that has just
        started is still electing its leaders), for `READY_PATIENCE` seconds at most."""
        await _retried(work, (TimeoutError, NoRespondersError, ServiceUnavailableError), READY_PATIENCE, 0.2)

    @staticmethod
    async def through_election(write: Callable[[], Awaitable[Any]]) -> Any:
        """`write()`, again while its stream has no leader: a cluster that has just started,
        or lost the server that led the stream, elects one within seconds, and meanwhile a
        write finds no responder. Then nothing reached the stream: trying again writes once.
        (In CI a mesh started with its three servers failed on its first write so.)"""
        return await _retried(write, (NoStreamResponseError,), ELECTION_PATIENCE, 0.1)

    async def close(self) -> None:
        if self._background:   # naks and unsubscribes sent on the way: let them reach the server
            await asyncio.gather(*self._background, return_exceptions=True)
        client, self._client, self._js = self._client, None, None
        self._buckets.clear()
        if client is not None and not client.is_closed:
            with contextlib.suppress(*FAILURES):
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    await client.close()

    async def _connect_once(self) -> None:
        """Connect, trying every server once (and once more after `reconnect_delay`): nats-py
        would try for ever, and a mesh whose store is not there must be told so."""
        client = Client()
        patience = self.options.connect_timeout * len(self.options.url) + self.options.reconnect_delay
        try:
            async with asyncio.timeout(patience):
                await client.connect(**self._connect, error_cb=self._on_error)
        except FAILURES as exc:
            with contextlib.suppress(*FAILURES):
                await client.close()
            why = self.last_error or describe(exc)
            raise StoreError(f"JetStream store {self.url}: cannot connect: {why}") from exc
        self._client = client

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in the background (a nak a cancelled claim cannot wait for); its
        failures are the connection's, which the next request reports."""
        async def quietly() -> None:
            with contextlib.suppress(*FAILURES):
                await work

        task = asyncio.get_running_loop().create_task(quietly())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _on_error(self, error: Exception) -> None:
        """nats-py reconnects by itself; keep what happened instead of logging every try."""
        self.last_error = describe(error)

    @contextlib.contextmanager
    def translated(self, what: str) -> Iterator[None]:
        """nats-py's errors (and timeouts) as `StoreError`s that say what failed where."""
        try:
            yield
        except StoreError:
            raise                               # said already (StoreError is an OSError too)
        except FAILURES as exc:
            raise StoreError(f"JetStream store {self.url}: {what}: {describe(exc)}") from exc

    # -- resources, made on first use --------------------------------------------------------

    async def stream(self, name: str, subjects: list[str], retention: RetentionPolicy) -> None:
        config = StreamConfig(name=name, subjects=subjects, retention=retention, storage=StorageType.FILE,
                              num_replicas=self.options.replicas, duplicate_window=DUPLICATE_WINDOW)
        try:
            await self.js.add_stream(config)
        except BadRequestError as exc:
            if exc.err_code != STREAM_EXISTS:
                raise

    async def key_value(self, bucket: str, ttl: float | None = None) -> KeyValue:
        async def make() -> KeyValue:
            config = KeyValueConfig(bucket=bucket, history=1, ttl=ttl, storage=StorageType.FILE,
                                    replicas=self.options.replicas)
            try:
                return await self.js.create_key_value(config)
            except BadRequestError as exc:
                if exc.err_code != STREAM_EXISTS:
                    raise
                return await self.js.key_value(bucket)

        return await self._bucket(bucket, make)

    async def object_store(self, bucket: str) -> ObjectStore:
        async def make() -> ObjectStore:
            try:
                return await self.js.create_object_store(bucket, storage=StorageType.FILE,
                                                         replicas=self.options.replicas)
            except BadRequestError as exc:
                if exc.err_code != STREAM_EXISTS:
                    raise
                return await self.js.object_store(bucket)

        return await self._bucket(f"obj:{bucket}", make)

    async def _bucket(self, key: str, make: Any) -> Any:
        bucket = self._buckets.get(key)
        if bucket is None:
            async with self._making:
                bucket = self._buckets.get(key)
                if bucket is None:
                    with self.translated(f"cannot open bucket {key}"):
                        bucket = self._buckets[key] = await make()
        return bucket

    # -- requests nats-py does not make for us ------------------------------------------------

    async def api(self, subject: str, request: dict[str, Any]) -> dict[str, Any]:
        """A JetStream API call (`STREAM.PURGE.<name>`...) and its answer, errors raised."""
        reply = await self.client.request(f"$JS.API.{subject}", orjson.dumps(request), timeout=REQUEST_TIMEOUT)
        answer = orjson.loads(reply.data)
        if "error" in answer:
            APIError.from_error(answer["error"])  # raises the class that fits the error
        return answer

    async def publish(self, messages: Sequence[Outgoing]) -> list[PubAck]:
        """Store the messages durably and return their acks, in the messages' order. An ack
        says `duplicate` when the stream had that Nats-Msg-Id within its duplicate window.

        A message that found no responder (its stream has no leader: an election) did not
        reach the stream, so that one alone is sent again, `through_election`: nothing is
        stored twice. Those sent again then come after any later message of the batch that
        was stored: across an election, order within a batch can change."""
        if not messages:
            return []
        acks: list[PubAck | None] = [None] * len(messages)
        unstored = list(range(len(messages)))

        async def send_unstored() -> None:
            nonlocal unstored
            results = await self._send([messages[i] for i in unstored])
            for i, result in zip(unstored, results, strict=True):
                if isinstance(result, BaseException) and not isinstance(result, NoStreamResponseError):
                    raise result
                if not isinstance(result, BaseException):
                    acks[i] = result
            unstored = [i for i in unstored if acks[i] is None]
            if unstored:
                raise NoStreamResponseError

        with self.translated(f"cannot store {plural(len(messages), 'message')}"):
            await self.through_election(send_unstored)
        return acks  # type: ignore[return-value]  # every one is set once send_unstored returns

    async def _send(self, messages: Sequence[Outgoing]) -> list[PubAck | BaseException]:
        """Publish one after the other on the connection, then await the acks together
        (each ack, or the error its publish met)."""
        self.connected()
        futures = []
        try:
            for subject, body, msg_id in messages:
                headers = {"Nats-Msg-Id": msg_id} if msg_id else None
                futures.append(await self.js.publish_async(subject, body, headers=headers))
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                return list(await asyncio.gather(*futures, return_exceptions=True))
        finally:
            for future in futures:
                future.cancel()  # those never answered (a no-op for the others)

    async def confirm(self, reply_subject: str, ack: bytes) -> None:
        """Send an ack, nak or progress to JetStream and wait until it has taken it."""
        await self.connected().request(reply_subject, ack, timeout=REQUEST_TIMEOUT)


async def _retried(work: Callable[[], Awaitable[Any]], passing: tuple[type[Exception], ...], patience: float,
                   pause: float) -> Any:
    """`work()`, again after `pause` seconds while it fails with one of the `passing` errors,
    for `patience` seconds at most (then that error is raised)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while True:
        try:
            return await work()
        except passing:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(pause)
