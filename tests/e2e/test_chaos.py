"""The chaos run of bench/chaos.py, reduced: 300 events into a real mesh while its replicas
and the mesh itself are SIGKILLed and its sink's and bridge's connections are cut and
slowed down through loopback proxies. Every accepted event reaches its function, its
sink and the mesh behind the bridge, or is a dead letter there with a reason: none lost.

The seed is random and printed (FMESH_CHAOS_SEED=N runs one again)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from support import ROOT

KINDS = ("replica_kill", "mesh_kill", "sink_cut", "sink_delay", "bridge_cut", "bridge_delay")


@pytest.mark.slow
@pytest.mark.timeout(400)  # mesh restarts take seconds each on a loaded machine
def test_no_accepted_event_is_lost_through_kills_cuts_and_delays(tmp_path):
    command = [sys.executable, str(ROOT / "bench" / "chaos.py"), "--events", "300", "--duration", "15",
               "--every", "1.5", "--settle", "90", "--keep", str(tmp_path)]
    if os.environ.get("FMESH_CHAOS_SEED"):
        command += ["--seed", os.environ["FMESH_CHAOS_SEED"]]
    run = run_bench(command, timeout=380)
    assert run.stdout.strip(), f"the chaos run ended without a result ({run.returncode}):\n{run.stderr[-5000:]}"
    result = json.loads(run.stdout)
    print(f"\nchaos, seed {result['seed']}: {result['accepted']} of {result['events']} accepted, "
          f"{result['lost']} lost, {result['duplicates']} duplicates, {result['dead_lettered']} dead-lettered; "
          f"survived {result['kills_survived']} in {result['duration_s']}s")
    where = {name: {k: d[k] for k in ("delivered", "dead_lettered", "lost", "lost_ids", "dead_letter_reasons")}
             for name, d in result["destinations"].items()}
    assert result["chaos_error"] is None, f"seed {result['seed']}: {result['chaos_error']}\n{run.stderr[-3000:]}"
    assert result["accepted"] == result["events"]  # the driver retries until the mesh is back
    assert result["lost"] == 0, f"seed {result['seed']}: lost events: {where}\n{run.stderr[-3000:]}"
    assert all(result["kills_survived"][kind] >= 1 for kind in KINDS), result["kills_survived"]
    assert all(d["dead_letters_without_reason"] == 0 for d in result["destinations"].values()), where
    assert run.returncode == 0, run.stderr[-3000:]


def run_bench(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run the bench in its own process group: if it overruns, its meshes go down with it."""
    bench = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                             start_new_session=True)
    try:
        out, err = bench.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(bench.pid, signal.SIGKILL)
        out, err = bench.communicate()
        raise AssertionError(f"the chaos run took more than {timeout:g}s:\n{err[-5000:]}") from None
    return subprocess.CompletedProcess(command, bench.returncode, out, err)
