"""The contracts of a trigger: what it calls (`Publish`, and `fmesh.contracts.StateStore`) and what it offers.

A trigger turns something that arrived (a Kafka record, a NATS message, a timer tick,
an HTTP request) into CloudEvents and hands them to `Publish`, which returns once they
are durable. A trigger never raises out of `start()` because a broker is down: it
keeps retrying in the background and says so in `status()`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from fmesh import meshlog
from fmesh.bindings.common import marked_invalid
from fmesh.errors import InvalidEvent
from fmesh.events import SENDER, Event, with_extension
from fmesh.tracing import NOOP, Tracer, publish_traced

Publish = Callable[[list[Event]], Awaitable[None]]
"""Store the events; durable on return, `fmesh.errors.StoreError` otherwise."""


def stamped(publish: Publish, sender: str, tracer: Tracer = NOOP) -> Publish:
    """`publish` that marks every event as published by `sender` (`trigger:<name>`) in
    `fmeshsender`, replacing whatever the source sent: only the mesh says who sent what.
    An event without a trace context gets a new one (see `fmesh.tracing.publish_traced`)."""

    async def publish_stamped(events: list[Event]) -> None:
        await publish_traced(publish, [with_extension(event, **{SENDER: sender}) for event in events], tracer)

    return publish_stamped

STOP_TIMEOUT = 15.0
log = meshlog.get("fmesh.triggers")

CONNECTED = "connected"
RETRYING = "retrying"
STOPPED = "stopped"


@dataclass
class TriggerStatus:
    """What a trigger reports about itself (the control plane shows it as is)."""

    name: str
    kind: str                       # "kafka" | "nats" | "timer" | "http"
    state: str                      # "connected" | "retrying" | "stopped"
    last_error: str | None          # names the URL that could not be reached
    events_in: int
    last_event_at: float | None
    lag: int | None = None          # Kafka: records not yet committed, over assigned partitions
    detail: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Trigger(Protocol):
    """A source of events. `start` returns at once; the work runs in background tasks."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def status(self) -> TriggerStatus: ...


class StatusTracker:
    """The mutable status of one trigger, updated by its loops, copied out by `status()`."""

    def __init__(self, name: str, kind: str) -> None:
        self._status = TriggerStatus(name, kind, STOPPED, None, 0, None)

    @property
    def name(self) -> str:
        return self._status.name

    @property
    def state(self) -> str:
        return self._status.state

    @property
    def detail(self) -> dict[str, Any]:
        return self._status.detail

    def connecting(self) -> None:
        """Started, not connected yet: "retrying" until the first connection succeeds."""
        self._status.state = RETRYING

    def connected(self) -> None:
        if self._status.state == RETRYING and self._status.last_error is not None:
            log.info(f"trigger {self.name} is connected again", trigger=self.name)
        self._status.state = CONNECTED

    def retrying(self, error: str) -> None:
        """Said in the log once per outage, not at every retry."""
        if self._status.state != RETRYING or self._status.last_error is None:
            log.warning(f"trigger {self.name} is retrying", trigger=self.name, error=error)
        self._status.state = RETRYING
        self._status.last_error = error

    def stopped(self) -> None:
        self._status.state = STOPPED

    def received(self, count: int, at: float | None = None) -> None:
        self._status.events_in += count
        self._status.last_event_at = at if at is not None else time.time()

    def set_lag(self, lag: int | None) -> None:
        self._status.lag = lag

    def count(self, key: str, amount: int = 1) -> None:
        self._status.detail[key] = self._status.detail.get(key, 0) + amount

    def invalid(self, wrapped: Event, error: InvalidEvent) -> Event:
        """A message that claimed to be a CloudEvent and is not: counted, logged, and passed on
        as `wrapped` (its bytes as data) marked with why."""
        self.count("invalid")
        self._status.detail["last_invalid"] = str(error)
        log.warning("a message could not be read as a CloudEvent: it goes on as data, marked invalid",
                    trigger=self.name, event_id=wrapped.id, event_source=wrapped.source, error=str(error))
        return marked_invalid(wrapped, error)

    def snapshot(self) -> TriggerStatus:
        status = self._status
        return TriggerStatus(status.name, status.kind, status.state, status.last_error,
                             status.events_in, status.last_event_at, status.lag, dict(status.detail))


async def stop_task(task: asyncio.Task | None, timeout: float = STOP_TIMEOUT) -> None:
    """Cancel a trigger's background task and wait (bounded) until it has cleaned up."""
    if task is None or task.done():
        return
    task.cancel()
    await asyncio.wait({task}, timeout=timeout)
