"""Pacing: while deliveries are behind, the ingress works on a few requests at a time.

Ingress and delivery share one event loop, and a loop turn runs everything that became
ready during the last one. Under heavy ingress every turn is full of requests, the
turns grow long, and delivery, which needs several turns per event (claim, send to
the replica, read the answer, ack), falls to a trickle while the backlog grows: with
1,500 events/s offered on a busy machine, about 1,000/s were accepted and 75/s
delivered while the load lasted; with a fixed number of requests at once, 450/s; with
the number shrinking as the backlog grows, 93% of what was accepted, and the rest
drained in 0.4 s (there with pacing from 1,000 waiting; it starts at 10,000, so
that bursts are taken at full speed: with 1,000 the ingress figure fell by a third). So once more than
`behind` deliveries wait, only a few requests are worked on at once, fewer the further
delivery falls behind; the others wait their turn in their connections (costing
nothing), each loop turn has room for delivery again, and ingress slows to the pace
delivery keeps. With no backlog nothing waits.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from fmesh.asgi import ASGIApp, Receive, Scope, Send

LIMIT = 16        # requests worked on at once when deliveries start to fall behind
BEHIND = 10_000   # deliveries waiting (all subscriptions) past which ingress is paced: a burst
                  # of up to this many is taken at full speed, a sustained overload is paced


class Pacing:
    """Runs ingress requests, at most `limit * behind / waiting` at once while more than
    `behind` deliveries wait: the further delivery falls behind, the fewer (at least one),
    so the backlog settles where ingress and delivery keep the same pace."""

    def __init__(self, waiting: Callable[[], int], limit: int = LIMIT, behind: int = BEHIND) -> None:
        self.waiting = waiting
        self.limit = limit
        self.behind = behind
        self._active = 0
        self._queue: deque[asyncio.Future[None]] = deque()

    def room(self) -> int | None:
        """Requests that may run at once now (None: any number)."""
        waiting = self.waiting()
        if waiting <= self.behind:
            return None
        return max(1, self.limit * self.behind // waiting)

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        await self._turn()
        try:
            await app(scope, receive, send)
        finally:
            self._release()

    async def _turn(self) -> None:
        room = self.room()
        if not self._queue and (room is None or self._active < room):
            self._active += 1
            return
        granted = asyncio.get_running_loop().create_future()
        self._queue.append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release()  # handed a turn just as the client left: pass it on
            raise

    def _release(self) -> None:
        self._active -= 1
        while self._queue:
            room = self.room()
            if room is not None and self._active >= room:
                return
            granted = self._queue.popleft()
            if not granted.done():
                self._active += 1
                granted.set_result(None)
