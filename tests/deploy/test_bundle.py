from __future__ import annotations

import pytest
from fmesh.broker.memory_state import MemoryBlobs
from fmesh.deploy.bundle import BundleStore, pack


def make_folder(root):
    (root / "pkg").mkdir(parents=True)
    (root / "handler.py").write_text("def handle(e): pass\n")
    (root / "pkg" / "util.py").write_text("X = 1\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "handler.cpython-311.pyc").write_bytes(b"junk")
    return root


def test_same_code_same_digest_anywhere(tmp_path):
    a = make_folder(tmp_path / "a")
    b = make_folder(tmp_path / "b")
    (b / "__pycache__" / "other.pyc").write_bytes(b"more junk")  # caches do not count
    assert pack(a)[0] == pack(b)[0]
    (b / "handler.py").write_text("def handle(e): return 1\n")
    assert pack(a)[0] != pack(b)[0]


async def test_store_unpacks_and_verifies(tmp_path):
    digest, data, _ = pack(make_folder(tmp_path / "src"))
    store = BundleStore(tmp_path / "bundles", MemoryBlobs())
    await store.put(digest, data)
    assert store.has(digest)
    assert (store.path(digest) / "pkg" / "util.py").read_text() == "X = 1\n"
    shipped = list((store.path(digest) / "__pycache__").glob("*.pyc"))
    assert shipped and all(p.read_bytes() != b"junk" for p in shipped)  # compiled there, not uploaded
    with pytest.raises(ValueError, match="does not match its digest"):
        await store.put("0" * 64, data)
    with pytest.raises(ValueError, match="not a bundle digest"):
        store.has("../../etc")


async def test_code_uploaded_on_one_node_is_fetched_from_the_store_on_another(tmp_path):
    digest, data, _ = pack(make_folder(tmp_path / "src"))
    shared = MemoryBlobs()
    await BundleStore(tmp_path / "node1", shared).put(digest, data)
    other = BundleStore(tmp_path / "node2", shared)
    assert not other.has(digest)
    assert await other.fetch(digest) and (other.path(digest) / "handler.py").is_file()
    assert not await other.fetch("1" * 64)  # uploaded nowhere


async def test_a_tampered_archive_in_the_store_is_refused(tmp_path):
    digest, data, _ = pack(make_folder(tmp_path / "src"))
    other = make_folder(tmp_path / "other")
    (other / "handler.py").write_text("import os; os.system('evil')\n")
    shared = MemoryBlobs()
    await shared.put(digest, pack(other)[1])  # another node's store says it is `digest`: it is not
    with pytest.raises(ValueError):
        await BundleStore(tmp_path / "node2", shared).fetch(digest)
    assert not BundleStore(tmp_path / "node2", shared).has(digest)
