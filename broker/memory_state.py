"""`StateStore` and `BlobStore` in this process's memory (tests, `memory://`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fmesh.broker.watchers import Watchers

from fmesh.contracts import Change, Entry
from fmesh.errors import Conflict


class MemoryState:
    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._revision = 0
        self._watchers = Watchers()

    def _write(self, key: str, value: bytes | None) -> int:
        self._revision += 1
        if value is None:
            self._entries.pop(key, None)
        else:
            self._entries[key] = Entry(key, value, self._revision)
        self._watchers.changed(Change(key, value, self._revision))
        return self._revision

    async def get(self, key: str) -> Entry | None:
        return self._entries.get(key)

    async def put(self, key: str, value: bytes) -> int:
        return self._write(key, value)

    async def create(self, key: str, value: bytes) -> int:
        if key in self._entries:
            raise Conflict(f"state {key!r} exists")
        return self._write(key, value)

    async def update(self, key: str, value: bytes, revision: int) -> int:
        entry = self._entries.get(key)
        if entry is None or entry.revision != revision:
            raise Conflict(f"state {key!r} is not at revision {revision}")
        return self._write(key, value)

    async def delete(self, key: str) -> None:
        if key in self._entries:
            self._write(key, None)

    async def list(self, prefix: str) -> dict[str, Entry]:
        return {k: e for k, e in sorted(self._entries.items()) if k.startswith(prefix)}

    async def _snapshot(self, prefix: str) -> tuple[dict[str, Entry], int]:
        return await self.list(prefix), self._revision

    def watch(self, prefix: str) -> AsyncIterator[Change]:
        return self._watchers.watch(prefix, self._snapshot)


class MemoryBlobs:
    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}

    async def put(self, name: str, data: bytes) -> None:
        self._blobs[name] = bytes(data)

    async def get(self, name: str) -> bytes | None:
        return self._blobs.get(name)

    async def delete(self, name: str) -> None:
        self._blobs.pop(name, None)

    async def names(self) -> list[str]:
        return sorted(self._blobs)
