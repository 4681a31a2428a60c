"""Runner pools with real replica processes forked from a real zygote."""

from __future__ import annotations

import asyncio

import pytest
from fmesh.runtime.policy import ScalePolicy
from pools import Harness

from fmesh.errors import HandlerError, HandlerTimeout
from fmesh.events import new_event


@pytest.fixture(params=["template", "zygote", "subprocess"])
async def harness(request, tmp_path):
    h = Harness(tmp_path, request.param)
    await h.start()
    yield h
    await h.stop()


@pytest.fixture
async def zygote(tmp_path):
    """Replicas forked as a mesh's pools fork them: from their function's template."""
    h = Harness(tmp_path, "template")
    await h.start()
    yield h
    await h.stop()


async def test_the_harness_leaves_no_temp_dir_behind(tmp_path):
    h = Harness(tmp_path, "subprocess")
    await h.start()
    assert h.run_dir.exists()
    await h.stop()
    assert not h.run_dir.exists()


async def test_cold_start_from_zero_then_warm(harness):
    pool = harness.pool("pid", ScalePolicy(max=2, idle_timeout=30), env={"GREETING": "hi"})
    assert pool.status().ready == 0
    reply = await pool.invoke(new_event("t", "/s"), timeout=10)
    assert reply.payload and b'"env":"hi"' in reply.payload.replace(b" ", b"")
    assert pool.status().ready == 1 and pool.status().cold_start_last_ms is not None
    again = await pool.invoke(new_event("t", "/s"), timeout=10)
    assert again.payload == reply.payload  # the same warm replica answered


async def test_scales_up_under_load_and_back_to_zero(zygote):
    pool = zygote.pool("pid", ScalePolicy(max=3, concurrency=1, idle_timeout=0.5))
    replies = await asyncio.gather(*(pool.invoke(new_event("t", "/s", {"sleep": 0.3}), 10) for _ in range(6)))
    pids = {r.data["pid"] for r in replies}
    assert len(pids) == 3, "six slow events at concurrency 1 should use all three replicas"
    assert pool.status().ready == 3
    for _ in range(100):
        if not pool.replicas:
            break
        await asyncio.sleep(0.05)
    assert pool.status().ready == 0 and not pool.replicas


async def test_concurrency_lets_one_replica_take_several_events(zygote):
    pool = zygote.pool("pid", ScalePolicy(max=1, concurrency=4))
    loop = asyncio.get_running_loop()
    started = loop.time()
    replies = await asyncio.gather(*(pool.invoke(new_event("t", "/s", {"sleep": 0.5}), 10) for _ in range(4)))
    assert len({r.data["pid"] for r in replies}) == 1
    assert loop.time() - started < 1.5, "four 0.5 s events on one replica at concurrency 4 run together"


async def test_min_replicas_stay_warm(zygote):
    pool = zygote.pool("pid", ScalePolicy(min=1, max=2, idle_timeout=0.2))
    for _ in range(100):
        if pool.status().ready == 1:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.6)
    assert pool.status().ready == 1


@pytest.mark.parametrize("how", ["exit", "kill", "segfault"])
async def test_a_dying_replica_fails_its_event_and_is_replaced(zygote, tmp_path, how):
    pool = zygote.pool("crash", ScalePolicy(max=1), env={"CRASH_ONCE": str(tmp_path / f"crashed-{how}")})
    with pytest.raises(HandlerError, match="stopped"):
        await pool.invoke(new_event("t", "/s", {"how": how}), timeout=10)
    reply = await pool.invoke(new_event("t", "/s", {"how": how}), timeout=10)
    assert "survived" in reply.data


async def test_timeout_recycles_the_replica(zygote):
    pool = zygote.pool("slow", ScalePolicy(max=1))
    with pytest.raises(HandlerTimeout):
        await pool.invoke(new_event("t", "/s", {"sleep": 30}), timeout=0.3)
    reply = await pool.invoke(new_event("t", "/s", {"sleep": 0}), timeout=10)
    assert reply.data["slept"] == 0
    assert "timed out after 0.3s" in "".join(zygote.logs.tail("slow"))


async def test_a_handler_that_cannot_load_fails_waiting_events_with_its_error(zygote):
    pool = zygote.pool("broken_import", ScalePolicy(max=1))
    with pytest.raises(HandlerError, match="this handler cannot load"):
        await pool.invoke(new_event("t", "/s"), timeout=5)
    assert "ImportError: this handler cannot load" in "".join(zygote.logs.tail("broken_import"))


async def test_handler_output_is_captured_per_replica(zygote):
    pool = zygote.pool("crash", ScalePolicy(max=1))
    await pool.invoke(new_event("t", "/s", {"how": "none"}), timeout=10)
    pool2 = zygote.pool("broken_import", ScalePolicy(max=1))
    with pytest.raises(HandlerError):
        await pool2.invoke(new_event("t", "/s"), timeout=5)
    lines = zygote.logs.tail("broken_import")
    assert any(" broken_import/1 stderr: " in line for line in lines)


async def test_a_handler_calling_sys_exit_fails_its_event_and_the_replica_is_replaced(zygote, tmp_path):
    pool = zygote.pool("exit_loop", ScalePolicy(max=1), env={"CRASH_ONCE": str(tmp_path / "exited")})
    with pytest.raises(HandlerError, match="SystemExit"):
        await pool.invoke(new_event("t", "/s"), timeout=10)
    reply = await pool.invoke(new_event("t", "/s"), timeout=10)
    assert "survived" in reply.data


async def test_memory_limit_shows_as_out_of_memory_and_recycles_the_replica(zygote):
    pool = zygote.pool("hog", ScalePolicy(max=1), memory_bytes=128 * 1024 * 1024)
    small = await pool.invoke(new_event("t", "/s", {"mb": 8}), timeout=10)
    assert small.data["allocated"] == 8 * 1024 * 1024
    with pytest.raises(HandlerError, match="out of memory"):
        await pool.invoke(new_event("t", "/s", {"mb": 512}), timeout=10)
    for _ in range(100):
        if pool.out_of_memory:
            break
        await asyncio.sleep(0.02)
    assert pool.out_of_memory == 1
    logs = "".join(zygote.logs.tail("hog"))
    assert "out of memory" in logs and "hog/1 stopped: out of memory" in logs
    assert (await pool.invoke(new_event("t", "/s", {"mb": 8}), timeout=10)).data["allocated"]  # a fresh replica


async def test_scale_down_waits_for_the_stable_window(zygote):
    pool = zygote.pool("pid", ScalePolicy(max=2, idle_timeout=0.1, stable_window=1.5))
    await asyncio.gather(*(pool.invoke(new_event("t", "/s", {"sleep": 0.2}), 10) for _ in range(2)))
    assert pool.status().ready == 2
    await asyncio.sleep(0.8)
    assert pool.status().ready == 2, "idle, but demand was 2 within the stable window"
    for _ in range(100):
        if not pool.replicas:
            break
        await asyncio.sleep(0.05)
    assert not pool.replicas


async def test_a_launch_that_times_out_is_a_failed_start_and_the_pool_recovers(zygote, monkeypatch):
    import os
    import signal
    import time

    from fmesh.runtime import launcher

    monkeypatch.setattr(launcher, "SPAWN_TIMEOUT", 0.3)
    pool = zygote.pool("pid", ScalePolicy(max=1, start_timeout=5))
    zygote_pid = zygote.launcher._process.pid
    os.kill(zygote_pid, signal.SIGSTOP)  # a wedged zygote: the spawn request is never answered
    try:
        with pytest.raises(HandlerError, match="did not fork a replica within 0.3s"):
            await pool.invoke(new_event("t", "/s"), timeout=5)
        assert pool.status().starting == 0  # counted as failed, not left starting for ever
    finally:
        os.kill(zygote_pid, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while True:  # the failed start backs off; once it has passed, starting works again
        try:
            await pool.invoke(new_event("t", "/s"), timeout=5)
            break
        except HandlerError:
            assert time.monotonic() < deadline, "the pool never recovered"
            await asyncio.sleep(0.1)
    assert pool.status().ready == 1


async def test_a_reply_with_values_json_lacks_is_written_in_their_json_form(zygote):
    pool = zygote.pool("returns", ScalePolicy(max=1))
    reply = await pool.invoke(new_event("t", "/s", {"what": "values"}), timeout=10)
    assert reply.data == {"at": "2026-12-04T19:00:00Z", "id": "00000000-0000-0000-0000-000000000001",
                          "price": "1.10", "point": {"x": 1, "y": 2}, "tags": ["a"]}


async def test_a_reply_holding_an_object_without_a_json_form_fails_and_names_its_type(zygote):
    pool = zygote.pool("returns", ScalePolicy(max=1))
    with pytest.raises(HandlerError, match="cannot turn builtins.object into JSON data"):
        await pool.invoke(new_event("t", "/s", {"what": "object"}), timeout=10)
    reply = await pool.invoke(new_event("t", "/s", {"what": "values"}), timeout=10)
    assert reply.data["price"] == "1.10"  # the replica lives on


async def test_a_replica_that_exits_before_it_connects_fails_its_start_at_once(harness):
    """A worker that cannot even reach its function's folder exits before its control
    connection opens: nothing closed, so its start waited out the whole start timeout."""
    pool = harness.pool("no-such-function-folder", ScalePolicy(max=1, start_timeout=120))
    with pytest.raises(HandlerError) as failed:
        await asyncio.wait_for(pool.invoke(new_event("t", "/s"), timeout=120), 20)
    assert "exited with code 1 before it connected to the mesh" in str(failed.value), failed.value
    assert pool.status().starting == 0
