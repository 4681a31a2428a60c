"""`StateStore` on a JetStream key/value bucket.

State keys are `/`-separated, KV keys `.`-separated (which is what lets a watch on a
prefix be a subject filter), and both allow `.`, `=`, `-` and `_` in a name. So `=` is
written `=3D` and `.` `=2E`, then `/` becomes `.`: reversible, and every KV key stays
valid. A watch or list under a prefix filters on the prefix's whole segments
(`function/` is `function.>`) and checks the rest of the prefix itself.

Revisions are the bucket's sequence numbers: they only grow, across keys and deletes,
so a compare-and-set holding a revision from before a delete always loses.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator

from fmesh.broker.jetstream.engine import FAILURES, Engine
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from fmesh.contracts import Change, Entry
from fmesh.errors import Conflict

KEY = re.compile(r"[A-Za-z0-9_=.-]+(/[A-Za-z0-9_=.-]+)*")
_ESCAPES = {"=": "=3D", ".": "=2E"}
_UNESCAPE = re.compile(r"=(3D|2E)")


def kv_key(key: str) -> str:
    if not KEY.fullmatch(key):
        raise ValueError(f"not a state key: {key!r} (/-separated names of letters, digits and -_=.)")
    return re.sub(r"[=.]", lambda m: _ESCAPES[m.group(0)], key).replace("/", ".")


def state_key(kv: str) -> str:
    return _UNESCAPE.sub(lambda m: "=" if m.group(1) == "3D" else ".", kv.replace(".", "/"))


def prefix_filter(prefix: str) -> str:
    """The KV subject filter covering every key that starts with `prefix`."""
    segments = prefix.split("/")[:-1]   # the last is partial (empty when the prefix ends in /)
    return ".".join([kv_key(s) for s in segments] + [">"])


class JetStreamState:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def _kv(self) -> KeyValue:
        return await self.engine.key_value(self.engine.names.state)

    async def get(self, key: str) -> Entry | None:
        kv = await self._kv()
        with self.engine.translated(f"cannot read state {key!r}"):
            try:
                entry = await kv.get(kv_key(key))
            except KeyNotFoundError:
                return None
        return Entry(key, entry.value or b"", entry.revision)

    async def put(self, key: str, value: bytes) -> int:
        kv = await self._kv()
        with self.engine.translated(f"cannot write state {key!r}"):
            return await self.engine.through_election(lambda: kv.put(kv_key(key), value))

    async def create(self, key: str, value: bytes) -> int:
        kv = await self._kv()
        with self.engine.translated(f"cannot create state {key!r}"):
            try:
                return await self.engine.through_election(lambda: kv.create(kv_key(key), value))
            except KeyWrongLastSequenceError:
                raise Conflict(f"state {key!r} exists") from None

    async def update(self, key: str, value: bytes, revision: int) -> int:
        kv = await self._kv()
        with self.engine.translated(f"cannot update state {key!r}"):
            try:
                return await self.engine.through_election(lambda: kv.update(kv_key(key), value, last=revision))
            except KeyWrongLastSequenceError:
                raise Conflict(f"state {key!r} is not at revision {revision}") from None

    async def delete(self, key: str) -> None:
        if await self.get(key) is None:
            return  # a delete of what is gone writes nothing (no change for watchers)
        kv = await self._kv()
        with self.engine.translated(f"cannot delete state {key!r}"):
            await self.engine.through_election(lambda: kv.delete(kv_key(key)))

    async def list(self, prefix: str) -> dict[str, Entry]:
        entries = {}
        async for change in self._changes(prefix, live=False):
            if change.value is not None:
                entries[change.key] = Entry(change.key, change.value, change.revision)
        return dict(sorted(entries.items()))

    def watch(self, prefix: str) -> AsyncIterator[Change]:
        return self._changes(prefix, live=True)

    async def _changes(self, prefix: str, live: bool) -> AsyncIterator[Change]:
        """The entries under `prefix` now, then (`live`) every change as it happens: one
        ordered consumer gives both, so nothing falls between them or comes twice."""
        kv = await self._kv()
        with self.engine.translated(f"cannot watch state under {prefix!r}"):
            watcher = await kv.watch(prefix_filter(prefix))
        try:
            current = True
            async for entry in watcher:
                if entry is None:               # the current entries are all there
                    if not live:
                        return
                    current = False
                    continue
                key = state_key(entry.key)
                if not key.startswith(prefix):
                    continue
                deleted = entry.operation in (KV_DEL, KV_PURGE)
                if deleted and current:
                    continue                    # a key deleted before: not a current entry
                yield Change(key, None if deleted else entry.value or b"", entry.revision)
        finally:
            with contextlib.suppress(*FAILURES):
                await watcher.stop()
