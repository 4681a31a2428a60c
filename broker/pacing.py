"""Pacing: when delivery falls behind for want of loop time, the ingress works on fewer
requests at once.

Ingress and delivery share one event loop, and a loop turn runs everything that became
ready during the last one. Under heavy ingress every turn is full of requests, the
turns grow long, and delivery, which needs several turns per event (claim, send to
the replica, read the answer, ack), falls to a trickle while the backlog grows: with
1,500 events/s offered on a busy machine, about 1,000/s were accepted and 75/s
delivered while the load lasted. With fewer requests at once, turns are short again
and delivery keeps pace (93% of what was accepted in the same run, the rest drained
in 0.4 s). A turn covers a request's work, not the reading of its body (`turn`, taken
by the ingress once the body is in): a client that sends slowly holds no turn.

So a controller looks a few times a second (`tick`): while more than `behind`
deliveries wait, their number grows and the loop is busy (its timers fire late), the
requests allowed at once halve (down to one); otherwise they grow again, until there is
no limit. A burst of up to `behind` events is taken at full speed; a backlog that does
not grow (a sink that is down, retrying) or a slow handler (the loop is idle) slow
nobody: only delivery starved of loop time does.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

TICK = 0.25        # seconds between two looks
BEHIND = 10_000    # deliveries waiting (all subscriptions) below which nothing is paced
BUSY_LAG = 0.005   # a timer firing this much late (s): the loop's turns are long
MOST = 64          # requests at once past which there is no limit
GROW = 4           # requests at once added per tick while delivery keeps up


class Pacing:
    def __init__(self, waiting: Callable[[], int], behind: int = BEHIND) -> None:
        self.waiting = waiting
        self.behind = behind
        self.room: int | None = None          # requests allowed at once (None: any number)
        self._last_waiting: int | None = None   # at the last tick (None: no tick yet)
        self._active = 0
        self._queue: deque[asyncio.Future[None]] = deque()

    def tick(self, lag: float) -> None:
        """Adjust the room, given how late the controller's own timer fired (`lag` seconds)."""
        waiting, before = self.waiting(), self._last_waiting
        self._last_waiting = waiting
        grew = 0 if before is None else waiting - before
        if waiting > self.behind and grew > 0 and lag > BUSY_LAG:
            self.room = max(1, (self.room or MOST) // 2)
        elif self.room is not None:
            self.room = None if self.room + GROW > MOST else self.room + GROW
            self._wake()

    async def control(self) -> None:
        """Tick for as long as the node runs."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + TICK
            await asyncio.sleep(TICK)
            self.tick(max(0.0, loop.time() - due))

    def turn(self) -> Turn:
        """Hold one of the turns for the work of one request (wait for it while paced)."""
        return Turn(self)

    def _leave(self) -> None:
        self._active -= 1
        self._wake()

    def _has_room(self) -> bool:
        return self.room is None or self._active < self.room

    async def _turn(self) -> None:
        if not self._queue and self._has_room():
            self._active += 1
            return
        granted = asyncio.get_running_loop().create_future()
        self._queue.append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._active -= 1  # handed a turn just as the client left: pass it on
                self._wake()
            raise

    def _wake(self) -> None:
        while self._queue and self._has_room():
            granted = self._queue.popleft()
            if not granted.done():
                self._active += 1
                granted.set_result(None)


class Turn:
    """`async with pacing.turn():` a class, not a generator: it runs for every request, and
    contextlib's generator machinery cost more than the pacing itself."""

    __slots__ = ("_pacing",)

    def __init__(self, pacing: Pacing) -> None:
        self._pacing = pacing

    async def __aenter__(self) -> None:
        await self._pacing._turn()

    async def __aexit__(self, *exc: object) -> None:
        self._pacing._leave()
