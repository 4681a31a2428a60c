"""Tokens made with `fmesh tokens create`: kept in the event log's state as their SHA-256
(`tokens/<name>`), the token itself shown once, at creation, and never stored.

A token has a scope: `publish` (POST / only), `read` (the control API's GET routes) or
`admin` (everything). It may also carry an allow rule and a rate limit for what it publishes.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from fmesh.broker.filters import compile_shorthand
from fmesh.broker.identity import SCOPES, Identity, Principal, token_digest
from fmesh.broker.policy import Gate, Rule

from fmesh import meshlog
from fmesh.contracts import Change, StateStore
from fmesh.errors import DeployError
from fmesh.following import follow, now_and_then
from fmesh.names import NAME_RULE, is_name
from fmesh.ratelimit import TokenBucket

log = meshlog.get("fmesh.broker")

PREFIX = "tokens/"
RECONCILE_EVERY = 15.0  # seconds between comparisons of the tokens known here with the store


@dataclass
class TokenRecord:
    """What is kept of a token: never the token, only its SHA-256 (hex)."""

    name: str
    scope: str
    sha256: str
    created_at: float
    allow: dict[str, Any] | None = None   # filter shorthand, as in a subscription's `filter:`
    rate: float | None = None             # events per second
    burst: int | None = None

    @property
    def principal(self) -> Principal:
        return Principal(f"token:{self.name}", self.scope)

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "sha256" and v is not None}


class Tokens:
    """The mesh's tokens, in its state store and known to its identity and gate."""

    def __init__(self, state: StateStore, identity: Identity, gate: Gate) -> None:
        self._state = state
        self._identity = identity
        self._gate = gate
        self.records: dict[str, TokenRecord] = {}
        self._creating = asyncio.Lock()

    async def load(self) -> int:
        """Know the stored tokens (at start). A record that cannot be read is said and skipped:
        one broken token must not keep the mesh down."""
        await self.reconcile()
        return len(self.records)

    async def create(self, name: str, scope: str, allow: dict[str, Any] | None = None,
                     rate: float | None = None, burst: int | None = None) -> tuple[TokenRecord, str]:
        """A new token: its record, and the token itself (shown once). DeployError if the name
        is taken or not valid, or the scope or allow rule is not."""
        async with self._creating:  # one at a time: two requests for one name must not both win
            check_new(name, scope, self.records)
            if allow is not None:
                compile_shorthand(allow, "allow")  # FilterError (a ValueError) says where
            token = secrets.token_urlsafe(32)
            record = TokenRecord(name, scope, token_digest(token).hex(), time.time(), allow, rate,
                                 burst if burst is not None or rate is None else max(1, round(rate)))
            await self._state.put(PREFIX + name, json.dumps(asdict(record)).encode())
            self._know(record)
            return record, token

    async def revoke(self, name: str) -> bool:
        if name not in self.records:
            return False
        await self._state.delete(PREFIX + name)
        self._forget(name)
        return True

    async def follow(self) -> None:
        """Know the tokens other nodes on the store create, and forget those they revoke, as
        it happens; and compare with the store now and then (runs for the node's life)."""
        await asyncio.gather(follow(self._state, PREFIX, self._apply, "the tokens"),
                             now_and_then(RECONCILE_EVERY, self.reconcile, "the tokens"))

    async def _apply(self, change: Change) -> None:
        if change.value is None:
            self._forget(change.key.removeprefix(PREFIX))
        else:
            self._learn(change.key, change.value)

    async def reconcile(self) -> None:
        """Know exactly the tokens the store holds now."""
        entries = await self._state.list(PREFIX)
        for name in set(self.records) - {key.removeprefix(PREFIX) for key in entries}:
            self._forget(name)
        for key, entry in entries.items():
            self._learn(key, entry.value)

    def _learn(self, key: str, value: bytes) -> None:
        try:
            record = TokenRecord(**json.loads(value))
            if self.records.get(record.name) != record:
                self._forget(record.name)
                self._know(record)
        except (ValueError, TypeError) as exc:  # a bad allow rule too: said, and the others still work
            log.warning(f"token {key.removeprefix(PREFIX)} is unreadable and does not work", error=str(exc))

    def _forget(self, name: str) -> None:
        record = self.records.pop(name, None)
        if record is not None:
            self._identity.forget(record.principal.name)
            self._gate.drop_rule(record.principal.name)

    def _know(self, record: TokenRecord) -> None:
        self.records[record.name] = record
        self._identity.add_bearer(bytes.fromhex(record.sha256), record.principal)
        allow = compile_shorthand(record.allow, "allow") if record.allow is not None else None
        bucket = TokenBucket(record.rate, record.burst or 1) if record.rate else None
        if allow is not None or bucket is not None:
            self._gate.set_rule(record.principal.name, Rule(allow, bucket))


def check_new(name: str, scope: str, records: dict[str, TokenRecord]) -> None:
    if not is_name(name):
        raise DeployError(f"token name {name!r} is not valid: {NAME_RULE}")
    if scope not in SCOPES:
        raise DeployError(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
    if name in records:
        raise DeployError(f"there is already a token named {name!r}: revoke it first (fmesh tokens revoke {name})")
