"""A test's own mesh on a shared nats-server: fresh stream and bucket names, deleted after."""

from __future__ import annotations

import uuid
from pathlib import Path

import nats
from external import NatsServer
from fmesh.broker.jetstream.names import Names
from fmesh.broker.stores import Store, open_store
from nats.js.errors import NotFoundError


class JetStreamMesh:
    """One test's mesh on the shared server; `store()` opens another process's worth of
    clients on it, `close()` closes them all and deletes the mesh's streams."""

    def __init__(self, server: NatsServer, data_dir: Path) -> None:
        self.server = server
        self.name = f"t{uuid.uuid4().hex[:12]}"
        self.data_dir = data_dir
        self.stores: list[Store] = []

    def url(self, **options: object) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"cluster": self.name, **options}.items())
        return f"{self.server.url}?{query}"

    async def store(self, **options: object) -> Store:
        store = open_store(self.url(**options), self.data_dir)
        await store.open()
        self.stores.append(store)
        return store

    async def close(self) -> None:
        for store in self.stores:
            await store.close()
        client = await nats.connect(self.server.url)
        try:
            for stream in Names(self.name).all_streams():
                try:
                    await client.jetstream().delete_stream(stream)
                except NotFoundError:
                    pass
        finally:
            await client.close()
