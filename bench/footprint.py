"""Footprint: memory of `fmesh up` with 100 deployed, idle functions against a bare
uvicorn process (bench/bare_app.py), in one run.

Idle functions scale to zero, so the mesh should run no function process at all: this
checks /proc for children of the mesh and of its zygote (any is a replica). With nothing
running, the zygote goes too after `--zygote-idle` (default 5m; the bench sets ZYGOTE_IDLE
so as not to wait five minutes, and waits until it has gone): the figure is the mesh's
memory once idle, with the zygote's measured before it went beside it. The memory of a
set of processes is their RSS summed, and PSS (from /proc/<pid>/smaps_rollup). Prints JSON.

    python bench/footprint.py [--functions 100]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.common import PYTHON, bare_app, emit, free_port, mesh, wait_http  # noqa: E402

NOOP_DIR = ROOT / "bench" / "functions" / "noop"
TOKEN = "bench"
ZYGOTE_IDLE = "3s"


def manifest(count: int) -> str:
    lines = ["functions:"]
    for i in range(count):
        lines += [f"  idle-{i:03d}:", f"    handler: {NOOP_DIR}/handler.py:handle",
                  f"    on: [{{type: bench.idle.{i}}}]"]
    return "\n".join(lines) + "\n"


def children(pid: int) -> list[int]:
    """The children of `pid` now; none once it (or one of its threads) has gone, as a
    template or replica may between two looks."""
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(p) for p in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return found
    return found


def descendants(pid: int) -> list[int]:
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time used so far by these processes (those still alive)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / tick


def command_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()


def memory_kib(pid: int) -> dict[str, int]:
    """RSS, PSS and USS (its private memory) of one process, in KiB."""
    rollup = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        rollup[name] = int(value.split()[0])
    return {"rss": rollup["Rss"], "pss": rollup["Pss"], "uss": rollup["Private_Clean"] + rollup["Private_Dirty"]}


def mesh_processes(mesh_pid: int) -> tuple[list[int], list[str]]:
    """The mesh, its zygote and its ingress workers (`--ingress-workers`, part of the mesh's
    cost); and the command lines of anything else (replicas, helpers)."""
    tree, others = [mesh_pid], []
    for child in children(mesh_pid):
        if "fmesh.deploy.ingress_worker" in command_of(child):
            tree.append(child)
        elif "fmesh.runtime.zygote" in command_of(child):
            tree.append(child)
            others += [command_of(p) for p in children(child)]  # forked replicas
        else:
            others.append(command_of(child))
    return tree, others


def deploy(base: str, folder: Path, count: int) -> None:
    path = folder / "fmesh.yaml"
    path.write_text(manifest(count))
    subprocess.run([PYTHON, "-m", "fmesh.cli", "deploy", "-f", str(path), "--mesh", base, "--token", TOKEN],
                   check=True, capture_output=True)


def wait_idle(base: str, count: int, timeout: float = 60) -> list[dict]:
    """/v1/status once all `count` functions are listed with no replica."""
    deadline = time.monotonic() + timeout
    while True:
        status = httpx.get(base + "/v1/status", headers={"authorization": f"Bearer {TOKEN}"}, timeout=30).json()
        functions = status["functions"]
        if len(functions) >= count and not any(f["replicas"] for f in functions):
            return functions
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(functions)} functions, replicas: {sum(f['replicas'] for f in functions)}")
        time.sleep(0.2)


def wait_zygote_gone(mesh_pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while any("fmesh.runtime.zygote" in command_of(child) for child in children(mesh_pid)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the zygote was still running {timeout:g}s after every function was idle")
        time.sleep(0.2)


def measure_mesh(folder: Path, count: int) -> dict:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with mesh(port, folder / "data", "--zygote-idle", ZYGOTE_IDLE, log=folder / "mesh.log") as process:
        wait_http(base + "/healthz")
        deploy(base, folder, count)
        functions = wait_idle(base, count)
        time.sleep(1.0)  # let start-up garbage settle, as it would on a long-running mesh
        tree, others = mesh_processes(process.pid)
        with_zygote = [{"role": role(pid), **memory_kib(pid)} for pid in tree]
        if not any(m["role"] == "zygote" for m in with_zygote):
            raise RuntimeError(f"the zygote went (--zygote-idle {ZYGOTE_IDLE}) before it was measured: "
                               "a machine too busy for this bench")
        wait_zygote_gone(process.pid)
        tree, more = mesh_processes(process.pid)
        idle = [{"role": role(pid), **memory_kib(pid)} for pid in tree]
    return {"functions": len(functions), "processes": len(tree), "function_processes": others + more,
            "rss_kib": sum(m["rss"] for m in idle), "pss_kib": sum(m["pss"] for m in idle),
            "per_process": idle, "before_the_zygote_went": with_zygote,
            "with_zygote_rss_kib": sum(m["rss"] for m in with_zygote)}


def role(pid: int) -> str:
    command = command_of(pid)
    return next((name for name in ("zygote", "ingress_worker") if f".{name}" in command), "mesh")


def measure_bare() -> dict:
    port = free_port()
    with bare_app(port) as process:
        wait_http(f"http://127.0.0.1:{port}/")
        with httpx.Client() as client:  # serve a little, as the mesh served its deploy
            for _ in range(100):
                client.post(f"http://127.0.0.1:{port}/", content=b"x" * 1024)
        time.sleep(1.0)
        return {"rss_kib": memory_kib(process.pid)["rss"], "pss_kib": memory_kib(process.pid)["pss"]}


def measure(count: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        fmesh = measure_mesh(Path(tmp), count)
    bare = measure_bare()
    return {"bench": "footprint", "functions": count,
            "fmesh_rss_mib": round(fmesh["rss_kib"] / 1024, 1), "bare_rss_mib": round(bare["rss_kib"] / 1024, 1),
            "ratio_rss": round(fmesh["rss_kib"] / bare["rss_kib"], 3),
            "fmesh_pss_mib": round(fmesh["pss_kib"] / 1024, 1), "bare_pss_mib": round(bare["pss_kib"] / 1024, 1),
            "ratio_pss": round(fmesh["pss_kib"] / bare["pss_kib"], 3),
            "fmesh_with_zygote_rss_mib": round(fmesh["with_zygote_rss_kib"] / 1024, 1),
            "ratio_rss_with_zygote": round(fmesh["with_zygote_rss_kib"] / bare["rss_kib"], 3),
            "no_function_processes": not fmesh["function_processes"],
            "fmesh": fmesh}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--functions", type=int, default=100)
    emit(measure(parser.parse_args().functions))


if __name__ == "__main__":
    main()
