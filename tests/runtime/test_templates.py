"""Function templates: replicas forked from a process that has loaded their handler once
behave as replicas that load it themselves, and the template goes when it should."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from fmesh.runtime.policy import ScalePolicy
from pools import Harness, alive, eventually, zygotes

from fmesh.events import new_event

# What a replica reports that must not depend on how it was started.
SAME = ("name", "calls", "env", "imported_env", "cwd", "imported_cwd", "path0", "files", "threads", "sigterm",
        "module", "loop")


async def two_replicas(tmp_path, kind: str, handler: str) -> list[dict]:
    """What each of two replicas of `introspect` reports about itself, one event each."""
    harness = Harness(tmp_path / kind, kind)
    await harness.start()
    try:
        pool = harness.pool("introspect", ScalePolicy(min=2, max=2), handler=handler,
                            env={"SECRET": "s3cret", "FMESH_FUNCTION": "introspect"})
        return await one_event_each(pool)
    finally:
        await harness.stop()


async def one_event_each(pool) -> list[dict]:
    """What the pool's two replicas answer to one event each, once both are ready."""
    await eventually(lambda: pool.status().ready == 2, 30, "two replicas")
    replies = await asyncio.gather(*(pool.invoke(new_event("t", "/s", {"sleep": 0.2}), 10) for _ in range(2)))
    return [reply.data for reply in replies]


@pytest.mark.parametrize("handler", ["handle", "handle_async"])
async def test_a_replica_forked_from_a_template_sees_what_a_fresh_interpreter_sees(tmp_path, handler):
    fresh = await two_replicas(tmp_path, "subprocess", f"handler.py:{handler}")
    forked = await two_replicas(tmp_path, "template", f"handler.py:{handler}")
    for report in fresh + forked:
        assert report["imported_env"]["SECRET"] == "s3cret"  # the import saw the function's env and secrets
        assert report["name"] == "handler" and report["calls"] == 1  # its own globals: nobody else's call
        assert report.get("loop", "uvloop") == "uvloop"
    assert [{k: r.get(k) for k in SAME} for r in forked] == [{k: r.get(k) for k in SAME} for r in fresh]
    assert all(r["imported_by"] == r["pid"] for r in fresh)
    first, second = sorted(forked, key=lambda r: r["pid"] != r["imported_by"])
    assert second["imported_by"] == first["pid"] != second["pid"], "one import, by the first replica"
    assert second["ppid"] not in (first["ppid"], first["pid"]), "the second forked from the template"
    assert first["random"] != second["random"]


async def cold_start_twice(pool) -> tuple[dict, dict]:
    """Reports of two cold starts: the first replica (which made the template) and one
    forked from the template after the function had scaled to zero."""
    first = (await pool.invoke(new_event("t", "/s"), 10)).data
    await eventually(lambda: not pool.replicas, 10, "scale to zero")
    again = (await pool.invoke(new_event("t", "/s"), 10)).data
    assert first["imported_by"] == first["pid"]
    assert again["imported_by"] == first["pid"] != again["pid"], "the template outlived scale-to-zero"
    assert again["calls"] == 1 and again["ppid"] != first["ppid"]
    return first, again


async def test_a_template_outlives_scale_to_zero_then_goes_after_its_idle_time(tmp_path):
    harness = Harness(tmp_path, "template", template_idle=2.0)
    await harness.start()
    try:
        pool = harness.pool("introspect", ScalePolicy(max=1, idle_timeout=0.1))
        _, again = await cold_start_twice(pool)
        template = again["ppid"]
        await eventually(lambda: not pool.replicas, 10, "scale to zero")
        assert alive(template)
        await eventually(lambda: not alive(template), 15, "the idle template to go")
        later = (await pool.invoke(new_event("t", "/s"), 10)).data
        assert later["imported_by"] == later["pid"], "a new template, a new import"
    finally:
        await harness.stop()
    await eventually(lambda: not any(alive(pid) for pid in (later["pid"], again["pid"], template)), 10,
                     "no process left")


async def test_an_idle_zygote_goes_only_once_nothing_runs_and_the_next_cold_start_starts_another(tmp_path):
    harness = Harness(tmp_path, "template", template_idle=0.5, zygote_idle=1.0)
    await harness.start()
    try:
        zygote = harness.launcher._process.pid
        pool = harness.pool("introspect", ScalePolicy(max=1, idle_timeout=3.0))
        first = (await pool.invoke(new_event("t", "/s"), 10)).data
        await asyncio.sleep(2.0)  # past zygote_idle, but its replica (and the template) still run
        assert pool.replicas and alive(zygote) and harness.zygotes_let_go == 0
        await eventually(lambda: not pool.replicas, 10, "scale to zero")
        await eventually(lambda: not alive(zygote), 15, "the idle zygote to go")
        assert harness.zygotes_let_go == 1
        again = (await pool.invoke(new_event("t", "/s"), 10)).data
        assert again["calls"] == 1 and again["imported_by"] == again["pid"] != first["pid"]
        assert harness.launcher._process.pid != zygote and alive(harness.launcher._process.pid)
    finally:
        await harness.stop()


async def test_a_zygote_that_says_idle_while_a_spawn_is_on_its_way_is_told_to_stay(tmp_path):
    harness = Harness(tmp_path, "template", zygote_idle=0.3)
    await harness.start()
    try:
        zygote = harness.launcher._process.pid
        in_flight = asyncio.get_running_loop().create_future()
        harness.launcher._spawns["on-its-way"] = in_flight  # as launch() holds it until "spawned" is read
        await asyncio.sleep(1.5)  # several idle periods: each "idle" is answered with "stay"
        assert alive(zygote) and harness.zygotes_let_go == 0
        del harness.launcher._spawns["on-its-way"]
        await eventually(lambda: harness.zygotes_let_go == 1, 10, "the zygote to say idle again, and go")
        await eventually(lambda: not alive(zygote), 10, "the zygote to exit")
    finally:
        await harness.stop()


async def test_a_zygote_start_cancelled_half_way_leaves_no_zygote_behind(tmp_path):
    harness = Harness(tmp_path, "template", zygote_idle=0.2)
    await harness.start()
    try:
        await eventually(lambda: harness.zygotes_let_go == 1, 10, "the idle zygote to go")
        await eventually(lambda: not zygotes(os.getpid()), 10, "it to exit")
        starting = asyncio.get_running_loop().create_task(harness.launcher.start())  # as a cold start would
        await eventually(lambda: zygotes(os.getpid()), 10, "a zygote to be starting")
        starting.cancel()  # its pool shut down meanwhile
        with pytest.raises(asyncio.CancelledError):
            await starting
        await eventually(lambda: not zygotes(os.getpid()), 10, "the half-started zygote to be stopped")
    finally:
        await harness.stop()


async def test_a_forgotten_functions_template_goes_with_its_last_replica(tmp_path):
    harness = Harness(tmp_path, "template")
    await harness.start()
    try:
        pool = harness.pool("introspect", ScalePolicy(max=1, idle_timeout=0.3))
        _, again = await cold_start_twice(pool)
        harness.launcher.forget("introspect")
        await asyncio.sleep(0.1)
        assert alive(again["ppid"]), "its replica still runs"
        await eventually(lambda: not pool.replicas, 10, "scale to zero")
        await eventually(lambda: not alive(again["ppid"]), 10, "the template to go")
    finally:
        await harness.stop()


async def test_a_handler_that_keeps_files_open_at_import_loads_in_each_replica(tmp_path):
    harness = Harness(tmp_path, "template")
    await harness.start()
    try:
        reports = {r["pid"]: r for r in await one_event_each(harness.pool("holds_file", ScalePolicy(min=2, max=2)))}
        assert len(reports) == 2 and all(r["imported_by"] == pid for pid, r in reports.items())
        assert "left 1 open file" in "".join(harness.logs.tail("holds_file"))
    finally:
        await harness.stop()


async def test_a_replica_whose_template_was_killed_is_still_reported_and_replaced(tmp_path):
    harness = Harness(tmp_path, "template")
    await harness.start()
    try:
        pool = harness.pool("introspect", ScalePolicy(min=2, max=2))
        forked = next(r for r in await one_event_each(pool) if r["imported_by"] != r["pid"])
        os.kill(forked["ppid"], signal.SIGKILL)  # the template
        await eventually(lambda: not alive(forked["ppid"]), 10, "the template to die")
        os.kill(forked["pid"], signal.SIGKILL)   # its replica, now the zygote's to wait for
        (replica,) = [r.id for r in pool.replicas.values() if r.pid == forked["pid"]]
        await eventually(lambda: (replica, "killed by SIGKILL") in harness.exits, 10, "its exit to be reported")
        await eventually(lambda: pool.status().ready == 2 and len(pool.replicas) == 2, 30, "a replacement")
        assert (await pool.invoke(new_event("t", "/s"), 10)).data["calls"] >= 1
    finally:
        await harness.stop()
