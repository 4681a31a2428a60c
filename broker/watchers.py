"""Watching state kept by one process: every change is fanned out to the watches it matches.

The memory and SQLite state stores are written by their own process alone, so they see
every change themselves. A watch registers before it reads the current entries, then
skips the changes that reading already covered (revisions are global and only grow), so
nothing falls between the snapshot and the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from fmesh.contracts import Change, Entry

Snapshot = Callable[[str], Awaitable[tuple[dict[str, Entry], int]]]  # entries under a prefix, revision now


class Watchers:
    def __init__(self) -> None:
        self._queues: set[tuple[str, asyncio.Queue[Change]]] = set()

    def changed(self, change: Change) -> None:
        for prefix, queue in self._queues:
            if change.key.startswith(prefix):
                queue.put_nowait(change)

    async def watch(self, prefix: str, snapshot: Snapshot) -> AsyncIterator[Change]:
        watch = (prefix, asyncio.Queue[Change]())
        self._queues.add(watch)
        try:
            entries, revision = await snapshot(prefix)
            for entry in entries.values():
                yield Change(entry.key, entry.value, entry.revision)
            while True:
                change = await watch[1].get()
                if change.revision > revision:
                    yield change
        finally:
            self._queues.discard(watch)
