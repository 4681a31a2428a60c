"""Time as the timer trigger sees it: a Protocol, the real clock and a hand-driven one.

`ManualClock` is the in-memory twin for tests and simulations: time moves only when
told to, and `next_sleeper()` says when someone waits on it, so a test can step a
schedule tick by tick without sleeping.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

MAX_NAP = 60.0  # the real clock re-checks wall time at least this often (NTP steps, suspend)


@runtime_checkable
class Clock(Protocol):
    def now(self) -> float:
        """Unix time in seconds."""

    async def sleep_until(self, when: float) -> None:
        """Return once `now() >= when`."""


class SystemClock:
    """The wall clock."""

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, when: float) -> None:
        while (delay := when - time.time()) > 0:
            await asyncio.sleep(min(delay, MAX_NAP))


class ManualClock:
    """A clock that moves only on `set`/`advance`; sleepers wake when their time comes."""

    def __init__(self, start: float) -> None:
        self._now = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self._changed = asyncio.Event()

    def now(self) -> float:
        return self._now

    async def sleep_until(self, when: float) -> None:
        if when <= self._now:
            await asyncio.sleep(0)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((when, waiter))
        self._changed.set()
        try:
            await waiter
        finally:
            self._sleepers = [(t, w) for t, w in self._sleepers if w is not waiter]

    def set(self, when: float) -> None:
        """Move to `when` (never backwards) and wake every sleeper that is due."""
        self._now = max(self._now, when)
        for deadline, waiter in self._sleepers:
            if deadline <= self._now and not waiter.done():
                waiter.set_result(None)

    def advance(self, seconds: float) -> None:
        self.set(self._now + seconds)

    async def next_sleeper(self, timeout: float = 10.0) -> float:
        """The earliest deadline anyone still sleeps until, waiting (bounded) for a sleeper."""
        async with asyncio.timeout(timeout):
            while True:
                pending = [t for t, w in self._sleepers if not w.done()]
                if pending:
                    return min(pending)
                self._changed.clear()
                await self._changed.wait()
