from __future__ import annotations

import asyncio

import pytest
from fmesh.broker.memory_state import MemoryBlobs
from fmesh.deploy.bundle import BundleLimits, BundleStore, digest_of, ignore_rules, pack
from support import tar_gz

from fmesh.errors import DeployError


def make_folder(root):
    (root / "pkg").mkdir(parents=True)
    (root / "handler.py").write_text("def handle(e): pass\n")
    (root / "pkg" / "util.py").write_text("X = 1\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "handler.cpython-311.pyc").write_bytes(b"junk")
    return root


def digest_and_archive(folder):
    packed = pack(folder)
    return packed.digest, packed.data


def test_same_code_same_digest_anywhere(tmp_path):
    a = make_folder(tmp_path / "a")
    b = make_folder(tmp_path / "b")
    (b / "__pycache__" / "other.pyc").write_bytes(b"more junk")  # caches do not count
    assert pack(a).digest == pack(b).digest
    (b / "handler.py").write_text("def handle(e): return 1\n")
    assert pack(a).digest != pack(b).digest


async def test_store_unpacks_and_verifies(tmp_path):
    digest, data = digest_and_archive(make_folder(tmp_path / "src"))
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
    digest, data = digest_and_archive(make_folder(tmp_path / "src"))
    shared = MemoryBlobs()
    await BundleStore(tmp_path / "node1", shared).put(digest, data)
    other = BundleStore(tmp_path / "node2", shared)
    assert not other.has(digest)
    assert await other.fetch(digest) and (other.path(digest) / "handler.py").is_file()
    assert not await other.fetch("1" * 64)  # uploaded nowhere


async def test_a_tampered_archive_in_the_store_is_refused(tmp_path):
    digest, data = digest_and_archive(make_folder(tmp_path / "src"))
    other = make_folder(tmp_path / "other")
    (other / "handler.py").write_text("import os; os.system('evil')\n")
    shared = MemoryBlobs()
    await shared.put(digest, pack(other).data)  # another node's store says it is `digest`: it is not
    with pytest.raises(ValueError):
        await BundleStore(tmp_path / "node2", shared).fetch(digest)
    assert not BundleStore(tmp_path / "node2", shared).has(digest)


async def test_a_blob_smuggling_a_compiled_handler_beside_the_real_one_is_refused(tmp_path):
    source = make_folder(tmp_path / "src")
    (source / "__pycache__").rename(tmp_path / "cache-out-of-the-way")
    digest = pack(source).digest
    smuggled = tar_gz({"handler.py": b"def handle(e): pass\n", "pkg/util.py": b"X = 1\n",
                        "__pycache__/handler.cpython-311.pyc": b"evil bytecode"})
    shared = MemoryBlobs()
    await shared.put(digest, smuggled)  # same digest as the real code: pack skips __pycache__
    with pytest.raises(ValueError, match="is not one fmesh packs"):
        await BundleStore(tmp_path / "node2", shared).fetch(digest)
    assert list((tmp_path / "node2").iterdir()) == []  # nothing left behind, not even .partial


async def test_a_bundle_that_unpacks_past_the_limit_is_refused_while_unpacking(tmp_path):
    bomb = tar_gz({f"f{i}.txt": b"\0" * 400_000 for i in range(5)})  # 2 MB from a few KB
    store = BundleStore(tmp_path / "bundles", MemoryBlobs(), BundleLimits(max_unpacked_bytes=1_000_000))
    with pytest.raises(ValueError, match="unpacks to more than 1000000 bytes"):
        await store.put("a" * 64, bomb)
    with pytest.raises(ValueError, match="not a readable bundle"):
        await store.put("b" * 64, b"not gzip at all")
    assert list((tmp_path / "bundles").iterdir()) == []


async def test_a_bundle_with_too_many_files_is_refused_and_leaves_nothing(tmp_path):
    many = tar_gz({f"f{i}.txt": b"x" for i in range(30)})
    store = BundleStore(tmp_path / "bundles", MemoryBlobs(), BundleLimits(max_files=20))
    with pytest.raises(ValueError, match="more than 20 files"):
        await store.put("a" * 64, many)
    assert list((tmp_path / "bundles").iterdir()) == []


async def test_a_member_nested_past_the_depth_limit_is_refused_not_a_crash(tmp_path):
    """Found by a probe: 1,200 nested folders overran the recursion limit making them (a 500)."""
    store = BundleStore(tmp_path / "bundles", MemoryBlobs())
    deep = tar_gz({"d/" * 1200 + "h.py": b"x = 1\n"})
    with pytest.raises(ValueError, match="is nested 1201 folders deep"):
        await store.put("a" * 64, deep)
    assert list((tmp_path / "bundles").iterdir()) == []


async def test_a_truncated_archive_is_refused_and_leaves_nothing(tmp_path):
    digest, data = digest_and_archive(make_folder(tmp_path / "src"))
    store = BundleStore(tmp_path / "bundles", MemoryBlobs())
    with pytest.raises(ValueError, match="not a readable bundle"):
        await store.put(digest, data[: len(data) // 2])
    assert list((tmp_path / "bundles").iterdir()) == []


def test_the_digest_of_an_unpacked_folder_is_the_digest_pack_gives(tmp_path):
    folder = make_folder(tmp_path / "src")
    (folder / "run.sh").write_text("#!/bin/sh\n")
    (folder / "run.sh").chmod(0o755)
    (folder / "big.bin").write_bytes(bytes(range(256)) * 20_000)  # several read chunks
    assert digest_of(folder) == pack(folder).digest


async def test_uploads_of_the_same_code_at_once_all_succeed(tmp_path):
    folder = make_folder(tmp_path / "src")
    (folder / "big.bin").write_bytes(bytes(range(256)) * 40_000)  # long enough for the unpacks to overlap
    digest, data = digest_and_archive(folder)
    store = BundleStore(tmp_path / "bundles", MemoryBlobs())
    results = await asyncio.gather(*(store.put(digest, data) for _ in range(6)), return_exceptions=True)
    assert results == [None] * 6, results
    assert digest_of(store.path(digest)) == digest
    assert [p.name for p in (tmp_path / "bundles").iterdir()] == [digest]


def test_an_unpack_a_crash_cut_short_is_cleared_at_start(tmp_path):
    left = tmp_path / "bundles" / f"{'a' * 64}.partial-x1y2"
    left.mkdir(parents=True)
    BundleStore(tmp_path / "bundles", MemoryBlobs())
    assert not left.exists()


def make_project(root):
    """A function folder with what people leave lying around next to their code."""
    for name, text in {"handler.py": "def handle(e): pass\n", ".env": "SECRET=1\n", "venv/lib/x.py": "",
                       ".venv/bin/python": "", "node_modules/left/index.js": "", ".git/HEAD": "ref\n",
                       "pkg/.env": "", "data/big.csv": "1,2\n", "data/keep.csv": "3\n", "notes.log": ""}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_defaults_leave_out_secrets_environments_and_git(tmp_path):
    folder = make_project(tmp_path / "fn")
    assert sorted(pack(folder, ignore=ignore_rules(folder)).sizes) == [
        "data/big.csv", "data/keep.csv", "handler.py", "notes.log"]
    # a command (say, node) needs its node_modules
    assert "node_modules/left/index.js" in pack(folder, ignore=ignore_rules(folder, python=False)).sizes


def test_fmeshignore_leaves_out_more_and_takes_a_default_back_with_a_bang(tmp_path):
    folder = make_project(tmp_path / "fn")
    (folder / ".fmeshignore").write_text("# data sets stay home\ndata/\n*.log\n!.env\n")
    packed = pack(folder, ignore=ignore_rules(folder))
    assert sorted(packed.sizes) == [".env", ".fmeshignore", "handler.py", "pkg/.env"]
    assert packed.digest == digest_of_unpacked(packed, tmp_path / "out")  # a node checks what it got


def digest_of_unpacked(packed, destination):
    from fmesh.deploy.bundle import unpack

    unpack(packed.data, destination, packed.digest)
    return digest_of(destination)


def test_a_line_that_is_no_pattern_names_the_file_and_line(tmp_path):
    folder = make_project(tmp_path / "fn")
    (folder / ".fmeshignore").write_text("data/\n!\n")
    with pytest.raises(DeployError, match=r"\.fmeshignore:2: '!' is not a gitignore pattern"):
        ignore_rules(folder)


def test_the_biggest_files_are_named_biggest_first(tmp_path):
    folder = make_project(tmp_path / "fn")
    (folder / "data" / "big.csv").write_bytes(bytes(5000))
    assert pack(folder, ignore=ignore_rules(folder)).biggest(2) == [("data/big.csv", 5000), ("handler.py", 20)]


def code_saying(folder):
    folder.mkdir()
    (folder / "handler.py").write_text(f"def handle(e): return {folder.name!r}\n")
    return folder


async def test_unused_code_goes_after_the_grace_and_used_code_never(tmp_path):
    from fmesh.deploy.unused_code import UnusedCode

    now = [0.0]
    blobs = MemoryBlobs()
    store = BundleStore(tmp_path / "bundles", blobs, clock=lambda: now[0])
    used, unused, elsewhere = (digest_and_archive(code_saying(tmp_path / name)) for name in ("a", "b", "c"))
    for digest, data in (used, unused):
        await store.put(digest, data)
    await blobs.put(elsewhere[0], elsewhere[1])  # uploaded through another node: only in the store
    collector = UnusedCode(store, grace=600)
    now[0] = 599.0
    assert await collector.sweep({used[0]}) == []  # the uploads are within their grace; the third first seen
    now[0] = 600.0
    assert await collector.sweep({used[0]}) == [unused[0]]
    assert not store.has(unused[0]) and await blobs.get(unused[0]) is None
    now[0] = 1199.0
    assert await collector.sweep({used[0]}) == [elsewhere[0]]
    now[0] = 10_000.0
    assert await collector.sweep({used[0]}) == [] and store.has(used[0]) and await blobs.get(used[0])
    store.has(used[0])  # checked by a deploy: needed again from now on
    assert await collector.sweep(set()) == []
