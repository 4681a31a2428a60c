"""Many nodes: end-to-end events/s with the JetStream store against SQLite on one node,
and with two nodes on one NATS server against one node, each pair in one run.

A run posts `--events` events in batches of 200 and stops the clock when every one has
been delivered to a function (a handler that does nothing). For two nodes, half the
batches go to each node's ingress at once, and each node delivers its share of the
subscription's deliveries. On a 2-core machine the NATS server, the nodes and their
replicas share the same two cores, so the second node adds ingress and delivery capacity
only where one node leaves a core idle: the figure says whether the second node takes work.

    python bench/nodes.py [--events 4000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench.common import PYTHON, Process, emit, free_port, median, mesh, wait_http  # noqa: E402

MANIFEST = """
functions:
  work:
    handler: {handler}:handle
    on: [{{type: bench.nodes}}]
    scale: {{max: 2, concurrency: 32}}
"""
HANDLER = "def handle(event):\n    return None\n"
HEADERS = {"authorization": "Bearer bench"}
BATCH = 200


def nats_server(port: int, folder: Path) -> Process:
    binary = shutil.which("nats-server") or str(Path(PYTHON).parent / "nats-server")
    return Process([binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(folder)])


def delivered(urls: list[str]) -> list[int]:
    counts = []
    for url in urls:
        report = httpx.get(url + "/v1/status", headers=HEADERS, timeout=10).json()
        counts.append(sum(f["delivered"] for f in report["functions"] if f["name"] == "work"))
    return counts


def post(url: str, run: str, first: int, count: int) -> None:
    with httpx.Client(timeout=30) as client:
        for start in range(first, first + count, BATCH):
            items = [{"specversion": "1.0", "id": f"{run}-{i}", "source": "/bench", "type": "bench.nodes"}
                     for i in range(start, min(start + BATCH, first + count))]
            answer = client.post(url + "/", content=json.dumps(items),
                                 headers={"content-type": "application/cloudevents-batch+json"})
            assert answer.status_code == 202, answer.text


def end_to_end(urls: list[str], run: str, events: int) -> tuple[float, list[int]]:
    """Events/s from the first post until all are delivered, and each node's share."""
    before = delivered(urls)
    share = events // len(urls)
    started = time.monotonic()
    posters = [threading.Thread(target=post, args=(url, run, n * share, share)) for n, url in enumerate(urls)]
    for poster in posters:
        poster.start()
    for poster in posters:
        poster.join()
    while sum(delivered(urls)) - sum(before) < share * len(urls):
        if time.monotonic() - started > 300:
            raise RuntimeError(f"timed out: {delivered(urls)} delivered")
        time.sleep(0.02)
    took = time.monotonic() - started
    return share * len(urls) / took, [a - b for a, b in zip(delivered(urls), before, strict=True)]


def deploy(url: str, folder: Path) -> None:
    (folder / "work").mkdir(exist_ok=True)
    (folder / "work" / "handler.py").write_text(HANDLER)
    manifest = folder / "fmesh.yaml"
    manifest.write_text(MANIFEST.format(handler=folder / "work" / "handler.py"))
    subprocess.run([PYTHON, "-m", "fmesh.cli", "deploy", "-f", str(manifest), "--mesh", url, "--token", "bench"],
                   check=True, capture_output=True)


def wait_deployed(urls: list[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        reports = [httpx.get(u + "/v1/status", headers=HEADERS, timeout=10).json() for u in urls]
        if all(any(f["name"] == "work" for f in r["functions"]) for r in reports):
            return
        time.sleep(0.1)
    raise RuntimeError("the deploy did not reach every node")


def started_meshes(stack: ExitStack, folder: Path, name: str, count: int, store: str | None) -> list[str]:
    urls = []
    for n in range(count):
        port = free_port()
        stack.enter_context(mesh(port, folder / f"{name}{n}", *(["--store", store] if store else [])))
        urls.append(f"http://127.0.0.1:{port}")
    for url in urls:
        wait_http(url + "/healthz")
    deploy(urls[0], folder)
    wait_deployed(urls)
    return urls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        folder = Path(tmp)
        nats_port = free_port()
        stack.enter_context(nats_server(nats_port, folder / "nats"))
        nats = f"nats://127.0.0.1:{nats_port}"
        sqlite = started_meshes(stack, folder, "sqlite", 1, None)
        jetstream = started_meshes(stack, folder, "js", 1, f"{nats}?cluster=one")
        pair = started_meshes(stack, folder, "pair", 2, f"{nats}?cluster=two")
        rates: dict[str, list[float]] = {"sqlite": [], "jetstream": [], "two_nodes": []}
        shares = []
        for run in range(args.runs):
            rates["sqlite"].append(end_to_end(sqlite, f"s{run}", args.events)[0])
            rates["jetstream"].append(end_to_end(jetstream, f"j{run}", args.events)[0])
            rate, share = end_to_end(pair, f"p{run}", args.events)
            rates["two_nodes"].append(rate)
            shares.append(share)
    medians = {name: median(values) for name, values in rates.items()}
    emit({"bench": "nodes", "events": args.events, "runs": args.runs,
          **{f"{name}_eps": [round(v) for v in values] for name, values in rates.items()},
          **{f"{name}_median": round(value) for name, value in medians.items()},
          "two_nodes_delivered_by_each": shares,
          "ratio_jetstream_to_sqlite": round(medians["jetstream"] / medians["sqlite"], 3),
          "ratio_two_nodes_to_one": round(medians["two_nodes"] / medians["jetstream"], 3)})


if __name__ == "__main__":
    main()
