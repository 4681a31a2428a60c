"""Ingress throughput: events/s that `fmesh up` accepts durably (202 after the SQLite commit)
against a bare ASGI app answering 202, under the same wrk load, in one run.

The mesh has one function subscribed to the bench events, so every accepted event is
really stored (an event no subscription wants is not kept); the function drains them
at the same time, as it would in production; each run starts only once it has drained
what came before. Prints JSON with both rates and the ratio.

Rates count 2xx answers only; the non-2xx answers (a mesh refusing load with 429 or 503)
and socket errors are reported beside them, and the events the mesh stored are checked
against the 2xx count (`none_lost`).

Each side's CPU time per request is reported too (informational): the bare app's process,
and the mesh's processes (the mesh, its zygote and the function's replica) from the start
of a run until they have delivered what it accepted, so an event's whole cost is counted.

    python bench/ingress.py [--seconds 5] [--runs 4] [--connections 64] [--otlp]

`--otlp` runs the mesh with `--otlp-endpoint` set to the bare app, which takes the span
exports as it takes any POST (a collector that answers at once).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench.common import bare_app, emit, free_port, in_turn, median, median_ratio, mesh, wait_http, wrk  # noqa: E402
from bench.footprint import cpu_seconds, descendants  # noqa: E402

MANIFEST = """
functions:
  sink:
    handler: {root}/functions/sink/handler.py:handle
    on: [{{type: bench.event}}]
    scale: {{max: 1, concurrency: 16}}
"""


def deploy(url: str, folder: Path) -> None:
    import subprocess

    manifest = folder / "fmesh.yaml"
    manifest.write_text(MANIFEST.format(root=Path(__file__).resolve().parent.parent))
    subprocess.run([sys.executable, "-m", "fmesh.cli", "deploy", "-f", str(manifest), "--mesh", url,
                    "--token", "bench"], check=True, capture_output=True)


def sink_status(url: str) -> dict:
    status = httpx.get(url + "/v1/status", headers={"authorization": "Bearer bench"}, timeout=120).json()
    return next(f for f in status["functions"] if f["name"] == "sink")


def stored_count(url: str) -> int:
    sink = sink_status(url)
    return sink["delivered"] + sink["pending"] + sink["dead_lettered"]


def wait_drained(url: str, timeout: float = 180) -> None:
    """Until the sink has delivered what the last run stored: a side measured while the
    mesh still drains would share the CPU with it."""
    deadline = time.monotonic() + timeout
    while sink_status(url)["pending"]:
        if time.monotonic() > deadline:
            raise SystemExit(f"the mesh did not drain its backlog within {timeout:.0f} s")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--otlp", action="store_true", help="export spans (to the bare app)")
    args = parser.parse_args()
    bare: list[dict] = []
    fmesh: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        bare_port, mesh_port = free_port(), free_port()
        tracing = ["--otlp-endpoint", f"http://127.0.0.1:{bare_port}"] if args.otlp else []
        with bare_app(bare_port) as bare_server, mesh(mesh_port, Path(tmp) / "data", *tracing) as mesh_server:
            wait_http(f"http://127.0.0.1:{bare_port}/")
            mesh_url = f"http://127.0.0.1:{mesh_port}"
            wait_http(mesh_url + "/healthz")
            deploy(mesh_url, Path(tmp))
            sides = ((bare, f"http://127.0.0.1:{bare_port}/", bare_server.pid),
                     (fmesh, mesh_url + "/", mesh_server.pid))
            for run in range(args.runs):  # ABBA pairs, their ratios taken (bench/common.py)
                for results, url, pid in in_turn(run, sides):  # each run ends once the mesh has drained
                    results.append(measured(url, pid, mesh_url, args))
            stored = stored_count(mesh_url)
    emit(summarize(bare, fmesh, stored, args))


def measured(url: str, pid: int, mesh_url: str, args: argparse.Namespace) -> dict:
    """One wrk run against `url`, with the CPU its server's processes spent per request until
    the mesh had delivered what the run stored (the bare app has nothing to deliver)."""
    before = cpu_seconds([pid, *descendants(pid)])
    result = wrk(url, args.seconds, args.connections)
    wait_drained(mesh_url)
    spent = cpu_seconds([pid, *descendants(pid)]) - before  # a replica started during the run counts whole
    return {**result, "cpu_us_per_request": spent / max(1, result["requests"]) * 1e6}


def summarize(bare: list[dict], fmesh: list[dict], stored: int, args: argparse.Namespace) -> dict:
    """Rates count 2xx answers only: a 503 or 429 is a refusal, not throughput."""
    bare_rps, fmesh_rps = median([r["ok_rps"] for r in bare]), median([r["ok_rps"] for r in fmesh])
    accepted = sum(r["requests"] - r["non_2xx"] for r in fmesh)
    bare_cpu, fmesh_cpu = [r["cpu_us_per_request"] for r in bare], [r["cpu_us_per_request"] for r in fmesh]
    return {"bench": "ingress", "otlp": args.otlp, "event_bytes": 1024, "connections": args.connections,
            "runs": args.runs,
            "bare_asgi_rps_median": round(bare_rps), "fmesh_rps_median": round(fmesh_rps),
            "ratio": median_ratio([r["ok_rps"] for r in fmesh], [r["ok_rps"] for r in bare]),
            "bare_runs": [round(r["ok_rps"]) for r in bare], "fmesh_runs": [round(r["ok_rps"]) for r in fmesh],
            "bare_cpu_us_per_request": round(median(bare_cpu), 1),
            "fmesh_cpu_us_per_event": round(median(fmesh_cpu), 1), "cpu_ratio": median_ratio(fmesh_cpu, bare_cpu),
            "fmesh_non_2xx": sum(r["non_2xx"] for r in fmesh), "bare_non_2xx": sum(r["non_2xx"] for r in bare),
            "fmesh_socket_errors": [r["socket_errors"] for r in fmesh if r["socket_errors"]],
            # wrk counts the answers it read before it stopped; a request still in flight then may
            # be stored without being counted, so stored >= accepted; fewer would be a loss
            "events_accepted": accepted, "events_stored": stored, "none_lost": stored >= accepted}

if __name__ == "__main__":
    main()
