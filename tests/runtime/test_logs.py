"""Function logs: followers get new lines, and every follower ends when the mesh stops."""

from __future__ import annotations

import asyncio

from fmesh.runtime.logs import LogStore, _lines


async def collect(store: LogStore, function: str) -> list[str]:
    return [line async for line in store.follow(function)]


async def test_end_followers_ends_every_follow_and_later_ones_at_once(tmp_path):
    store = LogStore(tmp_path)
    following = [asyncio.create_task(collect(store, name)) for name in ("a", "a", "b")]
    await asyncio.sleep(0)  # let them subscribe
    store.write("a", "r1", "stdout", "hello")
    store.end_followers()
    done = await asyncio.wait_for(asyncio.gather(*following), 2)
    assert [len(lines) for lines in done] == [1, 1, 0] and done[0][0].endswith("r1 stdout: hello\n")
    assert await asyncio.wait_for(collect(store, "a"), 2) == []
    store.close()


async def test_a_full_follower_still_hears_the_end(tmp_path):
    store = LogStore(tmp_path)
    following = store.follow("a")
    first = asyncio.create_task(anext(following))
    await asyncio.sleep(0)
    for n in range(10_001):  # one more than a follower buffers
        store.write("a", "r1", "stdout", str(n))
    store.end_followers()
    await first
    lines = [line async for line in following]
    assert 9_000 < len(lines) < 10_000
    store.close()


def test_a_log_write_that_fails_drops_the_line_and_the_store_keeps_going(tmp_path, caplog):
    """A full disk (here /dev/full, which refuses every write with ENOSPC) must not raise
    into the reader of a replica's output: that reader would die, and the replica's next
    print with it. The lines are dropped, said once, and counted when writing works again."""
    store = LogStore(tmp_path)
    store.path("a").symlink_to("/dev/full")
    for n in range(3):
        store.write("a", "r1", "stdout", f"lost {n}")
    store.note("a", "replica r1 started")
    assert store.dropped == 4
    store.path("a").unlink()  # space again
    store.write("a", "r1", "stdout", "kept")
    lines = store.tail("a")
    assert "4 log lines were not written" in lines[0] and "No space left on device" in lines[0]
    assert lines[1].endswith("r1 stdout: kept\n") and len(lines) == 2
    said = [r.getMessage() for r in caplog.records]
    assert said.count("cannot write the log of a: dropping its lines until it can") == 1
    store.close()


async def test_in_a_loop_the_lines_of_a_turn_are_written_once_at_its_end(tmp_path):
    store = LogStore(tmp_path)
    for n in range(50):
        store.write("a", "r1", "stdout", f"line {n}")
    assert store.path("a").stat().st_size == 0  # still buffered: no write(2) for each line
    await asyncio.sleep(0)
    assert len(_lines(store.path("a"))) == 50
    store.close()


async def test_tail_sees_the_lines_of_the_turn_it_runs_in(tmp_path):
    store = LogStore(tmp_path)
    store.write("a", "r1", "stdout", "just now")
    assert store.tail("a")[-1].endswith("r1 stdout: just now\n")
    store.close()


async def test_a_flush_that_fails_drops_and_counts_every_line_it_held(tmp_path, caplog):
    store = LogStore(tmp_path)
    store.path("a").symlink_to("/dev/full")
    for n in range(3):
        store.write("a", "r1", "stdout", f"lost {n}")
    await asyncio.sleep(0)
    assert store.dropped == 3
    store.write("a", "r1", "stdout", "lost too")  # the note about the 3 is lost with this one
    await asyncio.sleep(0)
    assert store.dropped == 4
    store.path("a").unlink()  # space again
    store.write("a", "r1", "stdout", "kept")
    await asyncio.sleep(0)
    lines = store.tail("a")
    assert "4 log lines were not written" in lines[0] and len(lines) == 2
    said = [r.getMessage() for r in caplog.records]
    assert said.count("cannot write the log of a: dropping its lines until it can") == 1
    store.close()
