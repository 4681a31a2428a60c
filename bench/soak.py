"""Soak: a steady load on a mesh for minutes, to see whether it leaks memory or file
descriptors. Not a speed test: the rate is well below what the mesh can take.

The mesh runs three functions and a subscription (bench/functions/soak/handler.py):
`order` replies to every event, and the reply goes to `tally`; `flaky` fails each
event's first attempt and succeeds on the retry; the subscription `receiver` POSTs
every event to an HTTP server in this process. The load is the open-loop fixed-rate
generator of bench/latency.py, in a thread. Every `--interval` seconds (a minute) it
prints one JSON line (to stderr): accepted/s and delivered/s (every function's and
sink's deliveries) in that interval, the mesh process's RSS (VmRSS) and open fds (by
kind, and without the generator's own connections, which it opens as it needs them),
and the same summed over its children (zygote and replicas). At the end, after the
backlog drained: RSS and fd growth from the end of the first interval (the warm-up) to
the end of the last, and whether they pass (RSS < 10 %, fds not grown). Prints JSON.

    python bench/soak.py [--duration 300] [--rate 50] [--interval 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.common import PYTHON, emit, free_port, mesh, wait_http  # noqa: E402
from bench.footprint import descendants  # noqa: E402
from bench.latency import Generator  # noqa: E402

HANDLERS = ROOT / "bench" / "functions" / "soak" / "handler.py"
TOKEN = "bench"
GROWTH_LIMIT_PCT = 10.0
LOAD_MARGIN = 3.0  # seconds the load runs past the last sample

MANIFEST = """
functions:
  order:
    handler: {handlers}:reply
    on: [{{type: bench.event}}]
    scale: {{min: 1, max: 1, concurrency: 16, idle_timeout: 10m}}
  tally:
    handler: {handlers}:tally
    on: [{{type: bench.event.reply}}]
    scale: {{min: 1, max: 1, concurrency: 16, idle_timeout: 10m}}
  flaky:
    handler: {handlers}:flaky
    on: [{{type: bench.event}}]
    scale: {{min: 1, max: 1, concurrency: 16, idle_timeout: 10m}}
    delivery: {{retries: 5, delay: 50ms, max_delay: 1s}}
subscriptions:
  receiver:
    filter: {{type: bench.event}}
    to: {receiver}/events
    concurrency: 16
"""


class Receiver:
    """The subscription's target: an HTTP/1.1 server (keep-alive) that counts and answers 202."""

    def __init__(self) -> None:
        self.count = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.count += 1  # one statement: atomic enough under the GIL for a count
                self.send_response(202)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class Load:
    """bench/latency.py's generator at `rate` for `seconds`, on its own loop in a thread;
    `ok` and `failed` can be read while it runs."""

    def __init__(self, url: str, rate: float, seconds: float) -> None:
        self.generator = Generator(url, rate, seconds)
        self.report: dict = {}
        self.thread = threading.Thread(target=self._run, name="soak-load", daemon=True)

    def _run(self) -> None:
        async def main() -> dict:
            try:
                return await self.generator.run()
            finally:
                for connection in self.generator.idle:
                    connection.transport.close()  # type: ignore[union-attr]

        self.report = asyncio.run(main())

    @property
    def answered(self) -> tuple[int, int]:
        return self.generator.ok, self.generator.failed


# -- what is measured ------------------------------------------------------------------------

def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def fd_kinds(pid: int) -> dict[str, int]:
    """Open fds by what they are: sockets come and go with connections, files and pipes should not."""
    kinds = {"socket": 0, "pipe": 0, "file": 0, "other": 0}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue  # closed meanwhile
        kind = target.split(":", 1)[0] if ":" in target else ("file" if target.startswith("/") else "other")
        kinds[kind if kind in kinds else "other"] += 1
    return kinds


def footprint(pid: int) -> dict:
    """RSS (MiB) and open fds of the mesh process, and of its children summed."""
    children = []
    for child in descendants(pid):
        try:
            children.append((vm_rss_kib(child), open_fds(child)))
        except (FileNotFoundError, ProcessLookupError):
            pass  # a replica that ended between listing and reading
    return {"mesh_rss_mib": round(vm_rss_kib(pid) / 1024, 1), "mesh_fds": open_fds(pid),
            "mesh_fd_kinds": fd_kinds(pid),
            "children": len(children), "children_rss_mib": round(sum(r for r, _ in children) / 1024, 1),
            "children_fds": sum(f for _, f in children)}


def delivered(status: dict) -> int:
    return sum(f["delivered"] for f in status["functions"]) + sum(s["delivered"] for s in status["sinks"])


def pending(status: dict) -> int:
    return sum(f["pending"] for f in status["functions"]) + sum(s["pending"] for s in status["sinks"])


class Soak:
    def __init__(self, folder: Path, rate: float, duration: float, interval: float) -> None:
        self.folder, self.rate, self.duration, self.interval = folder, rate, duration, interval
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(headers={"authorization": f"Bearer {TOKEN}"}, timeout=30)
        self.samples: list[dict] = []

    def status(self) -> dict:
        return self.client.get(self.base + "/v1/status").json()

    def deploy(self, receiver: Receiver) -> None:
        manifest = self.folder / "fmesh.yaml"
        manifest.write_text(MANIFEST.format(handlers=HANDLERS, receiver=receiver.url))
        subprocess.run([PYTHON, "-m", "fmesh.cli", "deploy", "-f", str(manifest), "--mesh", self.base,
                        "--token", TOKEN], check=True, capture_output=True)
        deadline = time.monotonic() + 60
        while not all(f["ready"] >= 1 for f in self.status()["functions"]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"functions not ready after 60s: {self.status()['functions']}")
            time.sleep(0.1)

    def run(self) -> dict:
        with Receiver() as receiver, mesh(self.port, self.folder / "data", log=self.folder / "mesh.log") as process:
            wait_http(self.base + "/healthz")
            self.deploy(receiver)
            # The load outlasts the last sample a little, so that every sample is taken under it.
            load = Load(self.base + "/", self.rate, self.duration + LOAD_MARGIN)
            load.thread.start()
            self.watch(process.pid, load)
            load.thread.join()
            drained = self.drain()
            final = footprint(process.pid)
            status = self.status()
        return self.summary(load, drained, final, status, receiver.count)

    def watch(self, pid: int, load: Load) -> None:
        """One sample at the end of each interval of the duration; each printed as it is taken."""
        started = last_time = time.monotonic()
        last_ok, last_delivered = 0, delivered(self.status())
        for n in range(1, max(1, round(self.duration / self.interval)) + 1):
            time.sleep(max(0.0, started + n * self.interval - time.monotonic()))
            now, (ok, failed), status = time.monotonic(), load.answered, self.status()
            count, seconds = delivered(status), now - last_time
            sample = {"t_s": round(now - started), "accepted_per_s": round((ok - last_ok) / seconds, 1),
                      "rejected": failed, "delivered_per_s": round((count - last_delivered) / seconds, 1),
                      "backlog": pending(status), **footprint(pid), "load_connections": load.generator.connections}
            # The generator opens connections when it has to (and they are the mesh's fds
            # too): what the mesh holds of its own is the rest.
            sample["mesh_fds_own"] = sample["mesh_fds"] - sample["load_connections"]
            self.samples.append(sample)
            print(json.dumps(sample), file=sys.stderr, flush=True)
            last_time, last_ok, last_delivered = now, ok, count

    def drain(self, timeout: float = 120) -> bool:
        deadline = time.monotonic() + timeout
        while pending(self.status()) > 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True

    def summary(self, load: Load, drained: bool, final: dict, status: dict, received: int) -> dict:
        # The first sample ends the warm-up; the last one is taken while the load still runs.
        first, last = self.samples[0], self.samples[-1]
        rss_growth = 100 * (last["mesh_rss_mib"] - first["mesh_rss_mib"]) / first["mesh_rss_mib"]
        children_growth = 100 * (last["children_rss_mib"] - first["children_rss_mib"]) / max(
            first["children_rss_mib"], 1e-9)
        fd_growth = last["mesh_fds_own"] - first["mesh_fds_own"]
        functions = {f["name"]: {k: f[k] for k in ("delivered", "retried", "failed", "dead_lettered", "replies",
                                                   "last_error")}
                     for f in status["functions"]}
        steady = self.samples[1:] or self.samples
        return {
            "bench": "soak", "rate_per_s": self.rate, "duration_s": self.duration, "interval_s": self.interval,
            "accepted": load.report.get("ok"), "rejected": load.report.get("failed"), "drained": drained,
            "accepted_per_s_mean": round(sum(s["accepted_per_s"] for s in steady) / len(steady), 1),
            "delivered_per_s_mean": round(sum(s["delivered_per_s"] for s in steady) / len(steady), 1),
            "received_by_sink": received, "functions": functions,
            "mesh_rss_mib": [s["mesh_rss_mib"] for s in self.samples],
            "children_rss_mib": [s["children_rss_mib"] for s in self.samples],
            "mesh_fds": [s["mesh_fds"] for s in self.samples],
            "mesh_fds_own": [s["mesh_fds_own"] for s in self.samples],
            "children_fds": [s["children_fds"] for s in self.samples],
            "after_drain": final,
            "mesh_rss_growth_pct": round(rss_growth, 2), "children_rss_growth_pct": round(children_growth, 2),
            "mesh_fd_growth": fd_growth,
            "pass": rss_growth < GROWTH_LIMIT_PCT and fd_growth <= 0 and drained,
            "samples": self.samples,
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=300, help="seconds of load (default 5 minutes)")
    parser.add_argument("--rate", type=float, default=50,
                        help="events/s, well below capacity (default 50: each is 4 deliveries, a reply and a retry)")
    parser.add_argument("--interval", type=float, default=60, help="seconds between samples (default 60)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        emit(Soak(Path(tmp), args.rate, args.duration, args.interval).run())


if __name__ == "__main__":
    main()
