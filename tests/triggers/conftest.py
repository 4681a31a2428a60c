"""Fixtures for trigger and sink tests: real brokers, and a recording event log."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from external import NatsServer, TansuBroker

from fmesh.errors import StoreError
from fmesh.events import Event

WAIT = 20.0  # the longest any test waits for something that should happen


class Recorder:
    """A `Publish` that keeps what it is given, can refuse on demand, and can be awaited."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.batches: list[list[Event]] = []
        self.refusals = 0               # how many more publishes to refuse
        self.refused = 0                # how many were refused
        self._changed = asyncio.Condition()

    async def __call__(self, events: list[Event]) -> None:
        async with self._changed:
            if self.refusals > 0:
                self.refusals -= 1
                self.refused += 1
                self._changed.notify_all()
                raise StoreError("test store refuses the batch")
            self.events.extend(events)
            self.batches.append(list(events))
            self._changed.notify_all()

    async def wait_for(self, count: int, timeout: float = WAIT) -> list[Event]:
        """The first `count` events, once that many arrived; fail after `timeout`."""
        await self.until(lambda: len(self.events) >= count, timeout, f"{count} events")
        return self.events[:count]

    async def until(self, condition: Callable[[], bool], timeout: float = WAIT,
                    what: str = "condition") -> None:
        async with self._changed:
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait_for(condition)
            except TimeoutError:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                     f"got {len(self.events)} events") from None

    def ids(self) -> list[str]:
        return [event.id for event in self.events]


async def poll(condition: Callable[[], object], timeout: float = WAIT, what: str = "condition",
               interval: float = 0.05) -> object:
    """Poll a condition that has no event to await (a status field, a row count); bounded.

    The condition may return an awaitable (ask a server), whose result is then used."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def eventually() -> Callable:
    """`await eventually(lambda: ..., what="...")`: see `poll`."""
    return poll


@pytest.fixture
def read_topic() -> Callable:
    """`await read_topic(bootstrap, topic, count)`: see `consume`."""
    return consume


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


@pytest.fixture
def tansu(tmp_path: Path) -> Iterator[TansuBroker]:
    broker = TansuBroker(tmp_path / "tansu").start()
    yield broker
    broker.stop()


@pytest.fixture
async def producer(tansu: TansuBroker) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(bootstrap_servers=tansu.bootstrap, acks="all")
    await producer.start()
    yield producer
    await producer.stop()


async def consume(bootstrap: str, topic: str, count: int, timeout: float = WAIT) -> list:
    """The first `count` records of `topic`, read with a fresh consumer from the start."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=None, enable_auto_commit=False)
    await consumer.start()
    records: list = []
    try:
        async with asyncio.timeout(timeout):
            while len(records) < count:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
    finally:
        await consumer.stop()
    return records


@pytest.fixture
async def sinks() -> AsyncIterator:
    """Opens sinks with `await sinks(url, options)` and stops them all afterwards."""
    from fmesh.runtime.sinks import open_sink

    opened = []

    async def sink(url: str, options: dict | None = None):
        s = open_sink(url, options)
        await s.start()
        opened.append(s)
        return s

    yield sink
    for s in opened:
        await s.stop()
