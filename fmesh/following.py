"""Following state that any node on the store may change: a watch for what changes while
it watches, and a comparison now and then for what a watch cannot see (a change made
while it was not watching: before it started, or while the store was away)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fmesh import meshlog
from fmesh.bindings.common import describe
from fmesh.contracts import Change, StateStore

log = meshlog.get("fmesh")

RETRY_FIRST = 0.5   # seconds before watching again after the store failed, doubling
RETRY_MAX = 10.0


async def follow(state: StateStore, prefix: str, apply: Callable[[Change], Awaitable[None]], what: str) -> None:
    """Apply every change under `prefix` (the current entries first), for as long as it runs.
    A failure (the store, or applying one change) is said, and the watch starts again: its
    snapshot brings back what a failed change left out."""
    delay = RETRY_FIRST
    while True:
        try:
            async for change in state.watch(prefix):
                delay = RETRY_FIRST
                await apply(change)
        except Exception as exc:  # noqa: BLE001 - a store gone, or one change that failed: watch again
            log.warning(f"lost sight of {what}, watching again", error=describe(exc))
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX)


async def now_and_then(every: float, compare: Callable[[], Awaitable[None]], what: str) -> None:
    """Run `compare` every `every` seconds; a store that fails is said, and tried next time."""
    while True:
        await asyncio.sleep(every)
        try:
            await compare()
        except Exception as exc:  # noqa: BLE001 - tried again next time; the following must not end
            log.warning(f"could not compare {what} with the store", error=describe(exc))
