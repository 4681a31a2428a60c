"""Shared fixtures (helpers live in support.py, importable from every test module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Mesh


@pytest.fixture
def mesh_factory(tmp_path: Path) -> Iterator:
    started: list[Mesh] = []

    def make(data_dir: Path | None = None, **kwargs) -> Mesh:
        mesh = Mesh(data_dir or tmp_path / f"data{len(started)}", **kwargs)
        started.append(mesh)
        return mesh

    yield make
    for mesh in started:
        mesh.stop()


@pytest.fixture
def mesh(mesh_factory) -> Mesh:
    return mesh_factory().start()


@pytest.fixture
def receiver() -> Iterator:
    from support import Receiver

    server = Receiver()
    yield server
    server.close()
