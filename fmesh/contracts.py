"""The small contracts between parts that more than one part needs.

The broker implements `Publisher` and hands each sidecar a `DeliveryQueue`; the runtime
uses both without knowing which store sits behind them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from fmesh.events import Event

DeliveryId = int | str   # opaque to the sidecar: a row id, a JetStream message's reply subject


@dataclass(slots=True)
class Delivery:
    """One event on its way to one subscription."""

    id: DeliveryId
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


@runtime_checkable
class Publisher(Protocol):
    async def publish(self, events: Sequence[Event]) -> None:
        """Route and store the events; durable on return, `StoreError` otherwise."""


@runtime_checkable
class DeliveryQueue(Protocol):
    """The deliveries of one subscription, as its sidecar sees them."""

    name: str
    claim_ttl: float | None  # seconds a claim lasts unless extended; None: it lasts

    async def claim(self, limit: int, wait: float) -> list[Delivery]:
        """Up to `limit` due deliveries, now claimed; with none, wait up to `wait` seconds for
        some (appended by any process, or falling due). A claim cancelled while it waits
        claims nothing."""

    async def ack(self, delivery_ids: Sequence[DeliveryId]) -> None: ...

    async def release(self, delivery_ids: Sequence[DeliveryId]) -> None:
        """Give claimed deliveries back unattempted (a sidecar stopped before doing them)."""

    async def retry(self, delivery: Delivery, delay: float, error: str) -> None:
        """Deliver it again in `delay` seconds, this attempt and its error counted (durably)."""

    async def extend(self, delivery_ids: Sequence[DeliveryId]) -> None:
        """Still working on these: keep them claimed (a store whose claims expire, as
        JetStream's do after the ack wait, would otherwise hand them to someone else)."""

    async def dead_letter(self, delivery: Delivery, letter: DeadLetter) -> None: ...

    async def redirect(self, delivery: Delivery, subscription: str, event: Event) -> bool:
        """Hand the delivery, as `event`, to another subscription (a dead-letter function).

        False when that subscription does not exist."""




@runtime_checkable
class Observer(Protocol):
    """Told what happens to events, on the hot path: the broker says what it accepted and
    where it routed it, a sidecar what each attempt came to. Implementations only take
    note (no I/O, no waiting, never raise); the event trail and the metrics are observers."""

    def accepted(self, routed: Sequence[tuple[Event, Sequence[str]]]) -> None:
        """Events stored (or, with no subscriptions, that matched nothing), each with where it goes."""

    def step(self, event: Event, subscription: str, kind: str, attempt: int = 0, status: int | None = None,
             duration: float | None = None, error: str | None = None, due: float | None = None,
             detail: str | None = None) -> None:
        """Something happened to `event` in `subscription`: a `Steps` kind, with the attempt
        number, status and duration (seconds) of the attempt, the error, when it is due again
        (`retrying`), and a detail (`reply`: the reply's id; `redirected`: the target)."""


class Steps:
    """The kinds of `Observer.step`."""

    DELIVERED = "delivered"
    RETRYING = "retrying"
    DEAD_LETTERED = "dead-lettered"
    REDIRECTED = "redirected"
    REPLY = "reply"
    REPLAYED = "replayed"
    DUPLICATE = "duplicate"
    NOT_SENT = "not-sent"        # a target was done with it without sending it (a bridge's loop)
    LOOPED = "looped"


@dataclass(frozen=True, slots=True)
class Entry:
    """A state value and the revision it was written at (revisions only grow, store-wide)."""

    key: str
    value: bytes
    revision: int


@dataclass(frozen=True, slots=True)
class Change:
    """A key written (`value`) or deleted (`value` None) at `revision`."""

    key: str
    value: bytes | None
    revision: int


@runtime_checkable
class StateStore(Protocol):
    """Small durable key/value state shared by every node on the store: deployed
    resources, trigger offsets, tokens, leases. Keys are `/`-separated names made of
    letters, digits and `-_=.`; `Conflict` says a compare-and-set lost."""

    async def get(self, key: str) -> Entry | None: ...

    async def put(self, key: str, value: bytes) -> int:
        """Write unconditionally; returns the new revision."""

    async def create(self, key: str, value: bytes) -> int:
        """Write only if the key does not exist (else `Conflict`)."""

    async def update(self, key: str, value: bytes, revision: int) -> int:
        """Write only if the key is still at `revision` (else `Conflict`)."""

    async def delete(self, key: str) -> None: ...

    async def list(self, prefix: str) -> dict[str, Entry]:
        """Every entry whose key starts with `prefix`, by key."""

    def watch(self, prefix: str) -> AsyncIterator[Change]:
        """The entries under `prefix` now, then every change to them as it happens, for as
        long as the caller iterates (written by any node on the store)."""


@runtime_checkable
class BlobStore(Protocol):
    """Named byte strings too big for state (function bundles), shared like state."""

    async def put(self, name: str, data: bytes) -> None: ...

    async def get(self, name: str) -> bytes | None: ...

    async def delete(self, name: str) -> None: ...

    async def names(self) -> list[str]: ...
