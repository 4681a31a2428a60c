"""Waiting for work on a subscription, for stores that only this process writes to.

SQLite and the memory store are written by one mesh process alone (each SQLite log has
one owner), so the store sees every arrival itself: an append, a release or a retry
wakes the claims waiting on it at once. A claim with nothing due waits for such a wake-up,
for the next delivery to fall due, or for its `wait` to run out, whichever comes first.
(A store shared by many processes, such as JetStream, waits on its server instead.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable

from fmesh.contracts import Delivery, DeliveryId

ClaimNow = Callable[[], Awaitable[tuple[list[Delivery], float | None]]]  # due deliveries, next due time
Release = Callable[[list[DeliveryId]], Awaitable[None]]
# uvloop's timers count whole milliseconds: a shorter timeout fires at once, and a claim
# waiting for a retry due in 0.3 ms would claim again and again until then.
MIN_WAIT = 0.001


class Arrivals:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def _event(self, subscription: str) -> asyncio.Event:
        event = self._events.get(subscription)
        if event is None:
            event = self._events[subscription] = asyncio.Event()
        return event

    def wake(self, subscriptions: Iterable[str]) -> None:
        for subscription in subscriptions:
            event = self._events.get(subscription)
            if event is not None:
                event.set()

    def wake_all(self) -> None:
        for event in self._events.values():
            event.set()

    async def claim(self, subscription: str, claim_now: ClaimNow, release: Release, wait: float,
                    clock: Callable[[], float]) -> list[Delivery]:
        """What `claim_now` claims, waiting up to `wait` seconds for there to be something.

        Cancelled, it claims nothing: what a claim already in progress takes is released."""
        deadline = time.monotonic() + wait
        while True:
            event = self._event(subscription)
            event.clear()  # before looking: an arrival from now on wakes us
            deliveries, next_due = await _uncancelled(claim_now(), release)
            left = deadline - time.monotonic()
            if deliveries or left <= 0:
                return deliveries
            timeout = max(MIN_WAIT, left if next_due is None else min(left, next_due - clock()))
            try:
                async with asyncio.timeout(timeout):
                    await event.wait()
            except TimeoutError:
                pass


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
