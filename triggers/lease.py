"""A lease in shared state, so that one node of many does a thing (fires a timer).

The lease is one state entry, `{"holder": ..., "until": ...}`. Taking it is a `create`
(nobody holds it) or an `update` on the revision read (it ran out); renewing is an
`update` on the revision of the holder's last write. A compare-and-set that loses means
someone else moved first, so at most one holder wins each round. A holder that dies stops
renewing, and another node takes over once `until` has passed: within `ttl` plus one
renewal interval. Holders compare `until` with their own clocks, so the nodes' clocks
must agree to well within `ttl` (NTP does).
"""

from __future__ import annotations

import json
import uuid

from fmesh.triggers.clock import Clock

from fmesh.contracts import Entry, StateStore
from fmesh.errors import Conflict

LEASE_TTL = 10.0  # seconds a lease lasts without renewal


class Lease:
    def __init__(self, state: StateStore, key: str, clock: Clock, ttl: float = LEASE_TTL,
                 holder: str | None = None) -> None:
        self.key = key
        self.ttl = ttl
        self.holder = holder or uuid.uuid4().hex
        self.until = 0.0          # when our hold runs out, by our clock (0: not held)
        self.other: str | None = None  # who holds it, when somebody else does
        self._state = state
        self._clock = clock
        self._revision: int | None = None

    @property
    def renew_every(self) -> float:
        return self.ttl / 3

    def held(self) -> bool:
        return self._clock.now() < self.until

    async def acquire(self) -> bool:
        """Take or renew the lease; True while we hold it. StoreError when the store is down."""
        now = self._clock.now()
        value = json.dumps({"holder": self.holder, "until": now + self.ttl}).encode()
        entry = await self._state.get(self.key)
        try:
            if entry is None:
                self._revision = await self._state.create(self.key, value)
            elif self._ours(entry) or self._lapsed(entry, now):
                self._revision = await self._state.update(self.key, value, entry.revision)
            else:
                self.until = 0.0
                return False
        except Conflict:  # somebody else took it between our read and our write
            self.until = 0.0
            return False
        self.until, self.other = now + self.ttl, None
        return True

    async def release(self) -> None:
        """Give it up at once (a clean stop), so another node need not wait for it to lapse."""
        if self._revision is not None and self.held():
            lapsed = json.dumps({"holder": self.holder, "until": 0}).encode()
            try:
                await self._state.update(self.key, lapsed, self._revision)
            except Conflict:
                pass
        self.until, self._revision = 0.0, None

    def _ours(self, entry: Entry) -> bool:
        # By holder, not by the revision of our last write: a renewal that was written but
        # whose answer was lost must not make us give up our own lease.
        return _read(entry).get("holder") == self.holder

    def _lapsed(self, entry: Entry, now: float) -> bool:
        record = _read(entry)
        self.other = record.get("holder") if isinstance(record.get("holder"), str) else None
        until = record.get("until")
        return not isinstance(until, int | float) or until < now


def _read(entry: Entry) -> dict:
    """The lease record; one that cannot be read counts as lapsed (it is then taken over)."""
    try:
        record = json.loads(entry.value)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}
