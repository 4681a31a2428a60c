"""The Kafka sink: produce each event to a topic, `kafka://host:port[,host:port]/topic`.

Binary mode (`ce_` headers, the payload bytes as the value) through the SDK's Kafka
binding, the `partitionkey` extension as the record key, `acks=all`. The producer
connects lazily and reconnects by itself; while the cluster is unreachable `invoke`
raises a retryable HandlerError naming the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from fmesh.runtime.sinks.base import SinkOptions
from fmesh.triggers.config import KafkaConnection
from fmesh.triggers.kafka_client import client_options

from fmesh.bindings.common import describe
from fmesh.bindings.kafka import write_binary, write_structured
from fmesh.errors import BrokerUnreachable, HandlerError
from fmesh.events import Event
from fmesh.tracing import hop_headers

UNREACHABLE = (KafkaConnectionError, KafkaTimeoutError, OSError, TimeoutError)
STOP_TIMEOUT = 10.0


def parse_kafka_url(url: str) -> tuple[list[str], str]:
    parts = urlsplit(url)
    topic = parts.path.lstrip("/")
    if parts.scheme != "kafka" or not parts.netloc or not topic or "/" in topic:
        raise ValueError(f"expected kafka://host:port/topic, got {url!r}")
    return parts.netloc.split(","), topic


class KafkaSink:
    """`Sink` producing to one Kafka topic."""

    def __init__(self, url: str, options: SinkOptions) -> None:
        self.url = url
        bootstrap, self.topic = parse_kafka_url(url)
        connection = KafkaConnection(bootstrap=bootstrap, **options.kafka.model_dump())
        self._options = client_options(connection, f"sink {url}")
        self._write = write_structured if options.structured else write_binary
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Connect now if the cluster answers; otherwise the first `invoke` tries again."""
        with contextlib.suppress(HandlerError):
            await self._ready(STOP_TIMEOUT)

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await _stop(producer)

    async def invoke(self, event: Event, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        producer = await self._ready(timeout)
        message = self._write(event)
        key = message.key.encode() if isinstance(message.key, str) else message.key
        try:
            async with asyncio.timeout_at(deadline):
                await producer.send_and_wait(self.topic, message.value, key=key, headers=[
                    *message.headers.items(), *((name, value.encode()) for name, value in hop_headers(event).items())])
        except (KafkaError, *UNREACHABLE) as exc:
            raise self._error(exc) from exc

    async def _ready(self, timeout: float) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(acks="all", **self._options)
                try:
                    async with asyncio.timeout(timeout):
                        await producer.start()
                except (KafkaError, *UNREACHABLE) as exc:
                    await _stop(producer)
                    raise self._error(exc) from exc
                self._producer = producer
            return self._producer

    def _error(self, exc: BaseException) -> HandlerError:
        if isinstance(exc, UNREACHABLE) or getattr(exc, "retriable", False):
            return HandlerError(str(BrokerUnreachable(self.url, describe(exc))), retryable=True)
        return HandlerError(f"{self.url}: {describe(exc)}", retryable=False)


async def _stop(producer: AIOKafkaProducer) -> None:
    try:
        async with asyncio.timeout(STOP_TIMEOUT):
            await producer.stop()
    except (KafkaError, *UNREACHABLE):
        pass
