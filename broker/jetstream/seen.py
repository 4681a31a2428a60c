"""The keys of bridged events seen lately (by source and id), for `append_unique`.

They live in a key/value bucket whose entries age out by themselves (its TTL is the
window of the first call: the broker always passes the same), each holding when it
was seen, so a shorter window asked for later still holds. Keys are hashed: bridged
keys hold any characters, KV keys only a few.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from fmesh.broker.jetstream.engine import Engine
from fmesh.broker.jetstream.names import token
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue


@dataclass(frozen=True, slots=True)
class Sighting:
    """What the bucket said about one key: seen within the window, and at which revision."""

    digest: str | None      # None: the event has no key (it always goes in)
    seen: bool = False
    revision: int = 0       # of the entry found, 0 when there was none

    def msg_id(self, subscription: str) -> str | None:
        """The same for two processes storing the same key at once (they found the same
        entry), a new one once it has been stored and recorded again."""
        return None if self.digest is None else f"{self.digest}.{self.revision}.{token(subscription)}"


class SeenKeys:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def _bucket(self, ttl: float) -> KeyValue:
        return await self.engine.key_value(self.engine.names.seen, ttl=max(ttl, 1.0))

    async def look(self, keys: Sequence[str | None], since: float, ttl: float) -> list[Sighting]:
        kv = await self._bucket(ttl)
        with self.engine.translated("cannot look up seen keys"):
            return list(await asyncio.gather(*(self._look(kv, key, since) for key in keys)))

    @staticmethod
    async def _look(kv: KeyValue, key: str | None, since: float) -> Sighting:
        if key is None:
            return Sighting(None)
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        try:
            entry = await kv.get(digest)
        except KeyNotFoundError:
            return Sighting(digest)
        return Sighting(digest, float(orjson.loads(entry.value).get("at", 0.0)) >= since, entry.revision)

    async def record(self, sightings: Sequence[Sighting], now: float, ttl: float) -> None:
        kv = await self._bucket(ttl)
        with self.engine.translated("cannot record seen keys"):
            await asyncio.gather(*(kv.put(s.digest, orjson.dumps({"at": now})) for s in sightings if s.digest))
