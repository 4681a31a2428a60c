"""Keeps a node's tallies in the state store, so its counts survive a restart.

Each node has its own key (`counters/<node id>`): counts are what this node saw, as
`fmesh status` shows them. Written every few seconds when something changed, and once at
stop; read once at start. A value that is not ours (corrupt, another version) is ignored
with one warning line and overwritten: counting starts again rather than stopping the node.
"""

from __future__ import annotations

import asyncio
import json
import time

from fmesh.broker.tallies import Tallies

from fmesh import meshlog
from fmesh.contracts import StateStore
from fmesh.errors import StoreError

SAVE_EVERY = 5.0          # seconds between writes while counts change
COMPLAINT_EVERY = 60.0    # seconds between two complaints about a failing store
log = meshlog.get("fmesh.deploy")


def counters_key(node_id: str) -> str:
    return f"counters/{node_id}"


class CounterKeeper:
    def __init__(self, tallies: Tallies, state: StateStore, node_id: str) -> None:
        self.tallies = tallies
        self.state = state
        self.key = counters_key(node_id)
        self._saved = -1          # `tallies.changes` when last written
        self._complained = 0.0

    async def load(self) -> None:
        """Add what the last run of this node counted."""
        try:
            entry = await self.state.get(self.key)
        except StoreError as exc:
            log.warning("could not read the counts of the last run (counting from zero)", error=str(exc))
            return
        if entry is None:
            return
        try:
            self.tallies.restore(json.loads(entry.value))
        except (ValueError, RecursionError) as exc:  # json's errors are ValueErrors too
            log.warning(f"{self.key} in the store is not a snapshot of counts: counting from zero", error=str(exc))
        self._saved = self.tallies.changes

    async def run(self) -> None:
        """Write the counts every `SAVE_EVERY` seconds when they changed, until cancelled."""
        while True:
            await asyncio.sleep(SAVE_EVERY)
            await self.save()

    async def save(self) -> None:
        changes = self.tallies.changes
        if changes == self._saved:
            return
        try:
            await self.state.put(self.key, json.dumps(self.tallies.snapshot(), separators=(",", ":")).encode())
        except StoreError as exc:
            if time.monotonic() - self._complained >= COMPLAINT_EVERY:
                self._complained = time.monotonic()
                log.warning(f"could not store the counts (tried again in {SAVE_EVERY:g}s)", error=str(exc))
            return
        self._saved = changes
