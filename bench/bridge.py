"""Bridge throughput: events/s that mesh A forwards to mesh B through a bridge, against
events posted straight to B's ingress, in one run on the same machine.

B accepts each event durably (202) and its function gets it. Through the bridge, the
events are posted to A in batches and A's bridge sends them on to B (in batches of up to
64); the clock stops when B has all of them. Straight to B, two baselines: wrk at full
speed (B's ingress capacity, 1 KiB binary-mode events, 64 connections), and a Python
client (httpx) posting one event per request, 16 at a time, as a user's program would.
Prints JSON with the rates and the ratio bridge / wrk (the headline) and bridge / client.

    python bench/bridge.py [--events 3000] [--runs 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench.common import ROOT, emit, free_port, median, mesh, wait_http, wrk  # noqa: E402

B_MANIFEST = """
functions:
  sink:
    handler: {root}/functions/sink/handler.py:handle
    on: [{{type: bench.bridge}}]
    scale: {{max: 1, concurrency: 16}}
"""
A_MANIFEST = """
bridges:
  to-b:
    to: {b}
    filter: {{type: bench.bridge}}
"""
HEADERS = {"authorization": "Bearer bench"}
CLIENT_CONCURRENCY = 16


def stored_at_b(url: str) -> int:
    """Events B has accepted for its function (delivered, in flight or pending)."""
    report = httpx.get(url + "/v1/status", headers=HEADERS, timeout=10).json()
    sink = next(f for f in report["functions"] if f["name"] == "sink")
    return sink["delivered"] + sink["pending"]


def wait_until(condition, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.02)


def batches(run: int, events: int, size: int = 200) -> list[bytes]:
    items = [{"specversion": "1.0", "id": f"r{run}-{i}", "source": "/bench", "type": "bench.bridge",
              "data": {"i": i}} for i in range(events)]
    return [json.dumps(items[i:i + size]).encode() for i in range(0, events, size)]


def through_bridge(a: str, b: str, run: int, events: int) -> float:
    before = stored_at_b(b)
    started = time.monotonic()
    with httpx.Client(timeout=30) as client:
        for body in batches(run, events):
            client.post(a + "/", content=body, headers={"content-type": "application/cloudevents-batch+json"})
    wait_until(lambda: stored_at_b(b) - before >= events)
    return events / (time.monotonic() - started)


async def post_all(url: str, run: int, events: int, concurrency: int) -> None:
    queue = list(range(events))

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            i = queue.pop()
            headers = {"ce-specversion": "1.0", "ce-id": f"d{run}-{i}", "ce-source": "/bench",
                       "ce-type": "bench.bridge", "content-type": "application/json"}
            answer = await client.post(url + "/", headers=headers, content=json.dumps({"i": i}))
            assert answer.status_code == 202, answer.text

    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))


def straight_to_b(b: str, run: int, events: int, concurrency: int) -> float:
    before = stored_at_b(b)
    started = time.monotonic()
    asyncio.run(post_all(b, run, events, concurrency))
    wait_until(lambda: stored_at_b(b) - before >= events)
    return events / (time.monotonic() - started)


def deploy(url: str, folder: Path, name: str, text: str) -> None:
    import subprocess

    manifest = folder / f"{name}.yaml"
    manifest.write_text(text)
    subprocess.run([sys.executable, "-m", "fmesh.cli", "deploy", "-f", str(manifest), "--mesh", url,
                    "--token", "bench"], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3, help="length of each wrk run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        port_a, port_b = free_port(), free_port()
        a, b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
        with mesh(port_b, folder / "b", "--mesh-id", "bench-b"), mesh(port_a, folder / "a", "--mesh-id", "bench-a"):
            wait_http(a + "/healthz")
            wait_http(b + "/healthz")
            deploy(b, folder, "b", B_MANIFEST.format(root=ROOT))
            deploy(a, folder, "a", A_MANIFEST.format(b=b))
            bridged, client, full = [], [], []
            for run in range(args.runs):
                full.append(wrk(b + "/", args.seconds, 64, event_type="bench.bridge")["rps"])
                client.append(straight_to_b(b, run, min(args.events, 1000), CLIENT_CONCURRENCY))
                bridged.append(through_bridge(a, b, run, args.events))
    emit({"bench": "bridge", "events": args.events, "runs": args.runs,
          "through_bridge_eps": [round(r) for r in bridged], "wrk_to_b_eps": [round(r) for r in full],
          "client_to_b_eps": [round(r) for r in client], "bridge_median": round(median(bridged)),
          "wrk_median": round(median(full)), "client_median": round(median(client)),
          "ratio": round(median(bridged) / median(full), 3),
          "ratio_to_client": round(median(bridged) / median(client), 3)})


if __name__ == "__main__":
    main()
