"""One suite for every state and blob store: memory, SQLite and JetStream."""

from __future__ import annotations

import asyncio

import pytest
from fmesh.broker.stores import open_store
from jetstream_mesh import JetStreamMesh

from fmesh.contracts import Change
from fmesh.errors import Conflict


@pytest.fixture(params=["memory", "sqlite", "jetstream"])
async def store(request, tmp_path):
    if request.param == "jetstream":
        mesh = JetStreamMesh(request.getfixturevalue("jetstream_server"), tmp_path)
        try:
            yield await mesh.store()
        finally:
            await mesh.close()
        return
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'mesh.db'}"
    opened = open_store(url, tmp_path)
    await opened.open()
    yield opened
    await opened.close()


async def next_change(changes, timeout: float = 5.0) -> Change:
    return await asyncio.wait_for(anext(changes), timeout)


async def test_put_get_list_and_delete(store):
    state = store.state
    await state.put("function/a", b"1")
    await state.put("function/b", b"2")
    await state.put("other/c", b"3")
    await state.put("function/a", b"1b")
    assert (await state.get("function/a")).value == b"1b"
    assert {k: e.value for k, e in (await state.list("function/")).items()} == {"function/a": b"1b",
                                                                                 "function/b": b"2"}
    await state.delete("function/a")
    await state.delete("function/a")  # deleting what is gone is no error
    assert await state.get("function/a") is None
    assert list(await state.list("function/")) == ["function/b"]


async def test_revisions_only_grow_across_keys_and_deletes(store):
    state = store.state
    first = await state.put("k/a", b"1")
    second = await state.put("k/b", b"1")
    await state.delete("k/a")
    third = await state.put("k/a", b"2")
    assert first < second < third
    assert (await state.get("k/a")).revision == third


async def test_create_refuses_a_key_that_exists(store):
    state = store.state
    revision = await state.create("lease/timer", b"node-1")
    with pytest.raises(Conflict):
        await state.create("lease/timer", b"node-2")
    assert (await state.get("lease/timer")).value == b"node-1"
    assert (await state.get("lease/timer")).revision == revision
    await state.delete("lease/timer")
    await state.create("lease/timer", b"node-2")


async def test_update_is_a_compare_and_set_on_the_revision(store):
    state = store.state
    revision = await state.create("lease/timer", b"node-1")
    renewed = await state.update("lease/timer", b"node-1 again", revision)
    with pytest.raises(Conflict):
        await state.update("lease/timer", b"node-2", revision)  # the stale revision loses
    assert (await state.get("lease/timer")).value == b"node-1 again"
    with pytest.raises(Conflict):
        await state.update("lease/none", b"x", renewed)  # a key that does not exist is no match
    # A key deleted and made again has a new revision: a holder of the old one still loses.
    await state.delete("lease/timer")
    await state.create("lease/timer", b"node-3")
    with pytest.raises(Conflict):
        await state.update("lease/timer", b"node-1", renewed)


async def test_watch_gives_the_current_entries_then_every_change(store):
    state = store.state
    await state.put("function/a", b"1")
    await state.put("other/x", b"-")
    changes = state.watch("function/")
    try:
        assert (await next_change(changes)).key == "function/a"
        await state.put("other/y", b"-")      # not under the prefix: not seen
        await state.put("function/b", b"2")
        await state.delete("function/a")
        seen = [await next_change(changes), await next_change(changes)]
        assert [(c.key, c.value) for c in seen] == [("function/b", b"2"), ("function/a", None)]
        assert seen[0].revision < seen[1].revision
    finally:
        await changes.aclose()


async def test_a_change_racing_the_watch_start_is_seen_once(store):
    state = store.state
    changes = state.watch("k/")
    first = asyncio.ensure_future(anext(changes))
    await state.put("k/a", b"1")  # races the watch's own snapshot: in it, or in the stream, not both
    try:
        assert (await asyncio.wait_for(first, 5)).key == "k/a"
        await state.put("k/b", b"2")
        assert (await next_change(changes)).key == "k/b"
    finally:
        await changes.aclose()


@pytest.fixture(params=["sqlite", "jetstream"])
async def durable_url(request, tmp_path):
    if request.param == "jetstream":
        mesh = JetStreamMesh(request.getfixturevalue("jetstream_server"), tmp_path)
        try:
            yield mesh.url()
        finally:
            await mesh.close()
        return
    yield f"sqlite:///{tmp_path / 'mesh.db'}"


async def test_state_survives_reopening_the_store(durable_url, tmp_path):
    url = durable_url
    store = open_store(url, tmp_path)
    await store.open()
    revision = await store.state.put("function/a", b"1")
    await store.blobs.put("bundle", b"code")
    await store.close()
    again = open_store(url, tmp_path)
    await again.open()
    try:
        assert (await again.state.get("function/a")).revision == revision
        assert await again.state.put("function/b", b"2") > revision
        assert await again.blobs.get("bundle") == b"code"
    finally:
        await again.close()


async def test_blobs_put_get_list_delete(store):
    blobs = store.blobs
    assert await blobs.get("a" * 64) is None
    await blobs.put("a" * 64, b"\x00" * 100_000)
    await blobs.put("b" * 64, b"small")
    assert await blobs.get("a" * 64) == b"\x00" * 100_000
    assert await blobs.names() == ["a" * 64, "b" * 64]
    await blobs.delete("a" * 64)
    assert await blobs.names() == ["b" * 64]


async def test_state_of_a_mesh_before_revisions_gets_them(tmp_path):
    import sqlite3

    conn = sqlite3.connect(tmp_path / "mesh.db")
    conn.execute("CREATE TABLE state(key TEXT PRIMARY KEY, value BLOB NOT NULL)")
    conn.executemany("INSERT INTO state VALUES (?, ?)", [("deployed/function/a", b"1"), ("tokens/ci", b"2")])
    conn.commit()
    conn.close()
    store = open_store(f"sqlite:///{tmp_path / 'mesh.db'}", tmp_path)
    await store.open()
    try:
        entries = await store.state.list("")
        assert {k: e.value for k, e in entries.items()} == {"deployed/function/a": b"1", "tokens/ci": b"2"}
        revisions = [e.revision for e in entries.values()]
        assert len(set(revisions)) == 2 and min(revisions) > 0
        assert await store.state.put("tokens/new", b"3") > max(revisions)
    finally:
        await store.close()
