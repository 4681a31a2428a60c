"""The small contracts between parts that more than one part needs.

The broker implements `Publisher` and hands each sidecar a `DeliveryQueue`; the runtime
uses both without knowing which store sits behind them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from fmesh.events import Event


@dataclass(slots=True)
class Delivery:
    """One event on its way to one subscription."""

    id: int
    subscription: str
    event: Event
    attempts: int = 0
    last_error: str | None = None
    undecodable: str | None = None   # why the stored event could not be read back (then dead-lettered)
    stored_at: float = 0.0           # when it was stored (a delivery policy's ttl counts from here)


@dataclass(slots=True)
class DeadLetter:
    """An event that exhausted its delivery policy, with why."""

    id: int
    subscription: str
    event: Event
    attempts: int
    reason: str
    status: int | None = None
    error: str | None = None
    failed_at: float = 0.0


@dataclass(slots=True)
class Claimed:
    """Due deliveries, and when the next unclaimed one falls due (None: nothing waits)."""

    deliveries: list[Delivery] = field(default_factory=list)
    next_due_at: float | None = None


@runtime_checkable
class Publisher(Protocol):
    async def publish(self, events: Sequence[Event]) -> None:
        """Route and store the events; durable on return, `StoreError` otherwise."""


@runtime_checkable
class DeliveryQueue(Protocol):
    """The deliveries of one subscription, as its sidecar sees them."""

    name: str

    async def claim(self, limit: int) -> Claimed: ...

    async def ack(self, delivery_ids: Sequence[int]) -> None: ...

    async def release(self, delivery_ids: Sequence[int]) -> None:
        """Give claimed deliveries back unattempted (a sidecar stopped before doing them)."""

    async def retry(self, delivery: Delivery, due_at: float, error: str) -> None: ...

    async def dead_letter(self, delivery: Delivery, letter: DeadLetter) -> None: ...

    async def redirect(self, delivery: Delivery, subscription: str, event: Event) -> bool:
        """Hand the delivery, as `event`, to another subscription (a dead-letter function).

        False when that subscription does not exist."""

    async def wait(self, timeout: float | None) -> None:
        """Return when new deliveries may be due, or after `timeout` seconds."""

    def wake(self) -> None:
        """Make a pending or the next `wait` return at once."""
