"""`BlobStore` on the mesh's JetStream object store (function bundles, chunked by JetStream).

Names follow the directory store's rule, so a bundle name that works on one store works
on every store."""

from __future__ import annotations

from fmesh.broker.directory_blobs import NAME
from fmesh.broker.jetstream.engine import Engine
from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore


class JetStreamBlobs:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def _store(self) -> ObjectStore:
        return await self.engine.object_store(self.engine.names.blobs)

    @staticmethod
    def _checked(name: str) -> str:
        if not NAME.fullmatch(name):
            raise ValueError(f"not a blob name: {name!r} (letters, digits and ._- only)")
        return name

    async def put(self, name: str, data: bytes) -> None:
        store = await self._store()
        with self.engine.translated(f"cannot store blob {name!r}"):
            await store.put(self._checked(name), bytes(data))

    async def get(self, name: str) -> bytes | None:
        store = await self._store()
        with self.engine.translated(f"cannot read blob {name!r}"):
            try:
                return (await store.get(self._checked(name))).data or b""
            except ObjectNotFoundError:
                return None

    async def delete(self, name: str) -> None:
        store = await self._store()
        with self.engine.translated(f"cannot delete blob {name!r}"):
            try:
                await store.delete(self._checked(name))
            except ObjectNotFoundError:
                pass

    async def names(self) -> list[str]:
        store = await self._store()
        with self.engine.translated("cannot list blobs"):
            try:
                return sorted(info.name for info in await store.list(ignore_deletes=True))
            except NotFoundError:
                return []
