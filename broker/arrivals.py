"""Waiting for work on a subscription, for stores that only this process writes to.

SQLite and the memory store are written by one mesh process alone (each SQLite log has
one owner), so the store sees every arrival itself: an append, a release or a retry
wakes the claims waiting on it at once. A claim with nothing due waits for such a wake-up,
for the next delivery to fall due, or for its `wait` to run out, whichever comes first.
(A store shared by many processes, such as JetStream, waits on its server instead.)

A claim that found nothing to do, and is the only one waiting on its subscription, may
instead be handed what arrives (`takers`, `hand`): the store takes the fresh deliveries
for it in the transaction that appends them, and the claim returns them without reading
them back, a store operation and a few loop turns sooner. Ordered claims never are: which
delivery of a key may go is the store's to say. For the same reason an ordered claim is
woken when a delivery of its subscription is settled (`settled`: acked, dead-lettered or
moved away), as that lets the next delivery of its key go; an unordered claim is not, as
nothing became due.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

from fmesh.contracts import Delivery, DeliveryId

ClaimNow = Callable[[], Awaitable[tuple[list[Delivery], float | None]]]  # due deliveries, next due time
Release = Callable[[list[DeliveryId]], Awaitable[None]]
# uvloop's timers count whole milliseconds: a shorter timeout fires at once, and a claim
# waiting for a retry due in 0.3 ms would claim again and again until then.
MIN_WAIT = 0.001


class _Waiter:
    """A claim between two looks: its future is set to None by a wake-up (look again), or
    to deliveries handed to it."""

    __slots__ = ("future", "limit", "ordered")

    def __init__(self, future: asyncio.Future[list[Delivery] | None], ordered: bool) -> None:
        self.future = future
        self.limit = 0
        self.ordered = ordered


class Arrivals:
    def __init__(self) -> None:
        self._waiting: dict[str, list[_Waiter]] = {}
        self._takers: dict[str, _Waiter] = {}  # subscription -> its one claim that may be handed deliveries

    def wake(self, subscriptions: Iterable[str]) -> None:
        waiting, takers = self._waiting, self._takers  # most appends find no claim waiting
        for subscription in subscriptions:
            if subscription in waiting or subscription in takers:
                self._wake(subscription)

    def settled(self, subscriptions: Iterable[str]) -> None:
        """Deliveries of `subscriptions` were settled: wake the ordered claims waiting on them."""
        for subscription in subscriptions:
            if any(waiter.ordered for waiter in self._waiting.get(subscription, ())):
                self._wake(subscription)

    def wake_all(self) -> None:
        for subscription in list(self._waiting):
            self._wake(subscription)

    def _wake(self, subscription: str) -> None:
        self._takers.pop(subscription, None)
        for waiter in self._waiting.pop(subscription, ()):
            if not waiter.future.done():
                waiter.future.set_result(None)

    @property
    def takers(self) -> Mapping[str, _Waiter]:
        """The subscriptions whose claim may be handed deliveries now (see `hand`); each
        waiter's `limit` is how many it takes at most."""
        return self._takers

    def hand(self, subscription: str, deliveries: list[Delivery]) -> bool:
        """Give `deliveries` (claimed for it, at most its limit) to the claim waiting on
        `subscription`, one of `takers`; False if it is not waiting any more."""
        waiter = self._takers.pop(subscription, None)
        if waiter is None or waiter.future.done():
            return False
        self._waiting.pop(subscription, None)  # it was the only one
        waiter.future.set_result(deliveries)
        return True

    async def claim(self, subscription: str, claim_now: ClaimNow, release: Release, wait: float,
                    clock: Callable[[], float], limit: int = 0, ordered: bool = False) -> list[Delivery]:
        """What `claim_now` claims, waiting up to `wait` seconds for there to be something;
        with a `limit` (never for an `ordered` claim), what is handed to it meanwhile, up to
        that many.

        Cancelled, it claims nothing: what a claim already in progress takes, or what was
        handed to it, is released."""
        deadline = time.monotonic() + wait
        loop = asyncio.get_running_loop()
        while True:
            waiter = _Waiter(loop.create_future(), ordered)
            self._enlist(subscription, waiter)  # before looking: an arrival from now on wakes us
            try:
                deliveries, next_due = await _uncancelled(claim_now(), release)
                left = deadline - time.monotonic()
                if deliveries or left <= 0:
                    return deliveries
                if limit and not ordered and not waiter.future.done() and self._waiting.get(subscription) == [waiter]:
                    waiter.limit = limit
                    self._takers[subscription] = waiter
                timeout = max(MIN_WAIT, left if next_due is None else min(left, next_due - clock()))
                handed = await _handed_within(waiter, timeout, release)
                if handed:
                    return handed
            finally:
                self._discharge(subscription, waiter)

    def _enlist(self, subscription: str, waiter: _Waiter) -> None:
        self._waiting.setdefault(subscription, []).append(waiter)
        self._takers.pop(subscription, None)  # two claims waiting: neither is handed anything

    def _discharge(self, subscription: str, waiter: _Waiter) -> None:
        if self._takers.get(subscription) is waiter:
            del self._takers[subscription]
        waiting = self._waiting.get(subscription)
        if waiting is not None and waiter in waiting:
            waiting.remove(waiter)
            if not waiting:
                del self._waiting[subscription]


async def _handed_within(waiter: _Waiter, timeout: float, release: Release) -> list[Delivery] | None:
    """What was handed to the waiter by the time it is woken or `timeout` passes (None: none).
    The future is shielded, so that whatever is handed as the timeout fires is still seen."""
    try:
        async with asyncio.timeout(timeout):
            await asyncio.shield(waiter.future)
    except TimeoutError:
        pass
    except asyncio.CancelledError:
        handed = _result(waiter.future)
        if handed:
            await release([d.id for d in handed])
        raise
    return _result(waiter.future)


def _result(future: asyncio.Future[list[Delivery] | None]) -> list[Delivery] | None:
    return future.result() if future.done() and not future.cancelled() else None


async def _uncancelled(claiming: Awaitable[tuple[list[Delivery], float | None]],
                       release: Release) -> tuple[list[Delivery], float | None]:
    """Let a claim finish even if we are cancelled meanwhile, then give back what it took."""
    task = asyncio.ensure_future(claiming)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        deliveries, _ = await task
        await release([d.id for d in deliveries])
        raise
