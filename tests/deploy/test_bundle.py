from __future__ import annotations

import pytest
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


def test_store_unpacks_and_verifies(tmp_path):
    digest, data, _ = pack(make_folder(tmp_path / "src"))
    store = BundleStore(tmp_path / "bundles")
    store.put(digest, data)
    assert store.has(digest)
    assert (store.path(digest) / "pkg" / "util.py").read_text() == "X = 1\n"
    shipped = list((store.path(digest) / "__pycache__").glob("*.pyc"))
    assert shipped and all(p.read_bytes() != b"junk" for p in shipped)  # compiled there, not uploaded
    with pytest.raises(ValueError, match="does not match its digest"):
        store.put("0" * 64, data)
    with pytest.raises(ValueError, match="not a bundle digest"):
        store.has("../../etc")
