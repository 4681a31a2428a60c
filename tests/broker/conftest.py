"""A nats-server for the store suites, started once per session; every test gets a mesh
of its own on it (fresh stream and bucket names), deleted afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from external import NatsServer
from jetstream_mesh import JetStreamMesh


@pytest.fixture(scope="session")
def jetstream_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


@pytest.fixture
async def jetstream(jetstream_server: NatsServer, tmp_path: Path) -> AsyncIterator[JetStreamMesh]:
    mesh = JetStreamMesh(jetstream_server, tmp_path)
    yield mesh
    await mesh.close()
