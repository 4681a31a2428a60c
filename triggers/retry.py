"""Waiting between attempts: capped exponential backoff, and publishing until stored."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from fmesh.triggers.base import Publish, StatusTracker, TriggerStatus, stop_task

from fmesh import meshlog
from fmesh.bindings.common import describe
from fmesh.errors import StoreError
from fmesh.events import Event

log = meshlog.get("fmesh.triggers")


class Backoff:
    """Delays that double from `initial` up to `maximum`, with jitter so peers spread out."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = max(initial, maximum)
        self._attempt = 0

    def next_delay(self) -> float:
        delay = min(self.maximum, self.initial * 2 ** self._attempt)
        self._attempt += 1
        return delay / 2 + random.uniform(0, delay / 2)

    def reset(self) -> None:
        self._attempt = 0

    async def wait(self) -> None:
        await asyncio.sleep(self.next_delay())


async def publish_until_stored(publish: Publish, events: list[Event], backoff: Backoff,
                               on_error: Callable[[StoreError], None]) -> None:
    """Publish `events`, retrying while the event log refuses them (cancel to give up)."""
    while True:
        try:
            await publish(events)
        except StoreError as exc:
            on_error(exc)
            await backoff.wait()
            continue
        backoff.reset()
        return


async def keep_running(what: str, body: Callable[[], Awaitable[None]], status: StatusTracker,
                       backoff: Backoff) -> None:
    """Run `body` until it returns; a bug in it is logged, reported, and `body` starts again."""
    while True:
        try:
            await body()
            return
        except Exception as exc:
            log.error(f"{what} failed; starting it again", exc_info=exc, trigger=status.name, error=describe(exc))
            status.retrying(f"{what}: unexpected {type(exc).__name__}: {exc}")
            await backoff.wait()


class BackgroundTrigger:
    """start/stop/status of a trigger whose work is one background task, started again
    after a bug with backoff. Subclasses set `name`, `_status` and `_task = None`, and
    give `_description()`, `_restart_backoff()` and `_run()`."""

    name: str
    _status: StatusTracker
    _task: asyncio.Task | None

    def _description(self) -> str:
        raise NotImplementedError

    def _restart_backoff(self) -> Backoff:
        raise NotImplementedError

    async def _run(self) -> None:
        raise NotImplementedError

    def _starting(self) -> None:
        """The state shown until the task reports otherwise."""
        self._status.connecting()

    async def start(self) -> None:
        if self._task is None:
            self._starting()
            what = self._description()
            self._task = asyncio.get_running_loop().create_task(
                keep_running(what, self._run, self._status, self._restart_backoff()), name=what)

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        self._status.stopped()

    def status(self) -> TriggerStatus:
        return self._status.snapshot()
