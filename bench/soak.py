"""Soak: a steady load on a mesh for minutes, to see whether it leaks memory or file
descriptors. Not a speed test: the rate is well below what the mesh can take.

The mesh runs three functions and a subscription (bench/functions/soak/handler.py):
`order` replies to every event, and the reply goes to `tally`; `flaky` fails each
event's first attempt and succeeds on the retry; the subscription `receiver` POSTs
every event to an HTTP server in this process. The load is the open-loop fixed-rate
generator of bench/latency.py, in a thread. Every `--interval` seconds (a minute) it
prints one JSON line (to stderr): accepted/s and delivered/s (every function's and
sink's deliveries) in that interval, the backlog, the mesh process's RSS (VmRSS) and open
fds (all; its clients' connections; its pooled connections to the sink; its own: files,
pipes, listeners, replica sockets), RSS and fds summed over its children (zygote and
replicas), and the sizes of the event log's database and WAL. At the end, after the
backlog drained: RSS growth from the end of the first interval (the warm-up) to the end
of the last, growth of the mesh's own fds from the warm-up to after the drain, and
whether they pass (RSS < 10 %, fds not grown). Prints JSON.

    python bench/soak.py [--duration 300] [--rate 30] [--interval 60]
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


def tcp_ports(pid: int) -> dict[str, tuple[int, int]]:
    """Every TCP socket of the process's network namespace: 'socket:[inode]' -> (local, remote) port."""
    ports = {}
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = (int(address.rsplit(":", 1)[1], 16) for address in fields[1:3])
            ports[f"socket:[{fields[9]}]"] = (local, remote)
    return ports


def unix_sockets(pid: int) -> set[str]:
    return {f"socket:[{line.split()[6]}]" for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]}


def mesh_fds(pid: int, ingress_port: int, sink_port: int) -> dict[str, int]:
    """The mesh's open fds: connections of ingress clients (the generator opens them as it
    needs them), connections to the sink (up to the subscription's concurrency, pooled),
    and the rest, its own: files, pipes, listeners, replica sockets. Those must not grow."""
    targets = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            targets.append(os.readlink(fd))
        except FileNotFoundError:
            continue  # closed meanwhile
    ports, unix = tcp_ports(pid), unix_sockets(pid)
    for _ in range(3):  # /proc/net/tcp is read a page at a time: under churn a read misses some
        if all(t in ports or t in unix for t in targets if t.startswith("socket:")):
            break
        ports.update(tcp_ports(pid))
    counts = {"total": 0, "ingress_clients": 0, "sink": 0, "own": 0}
    for target in targets:
        local, remote = ports.get(target, (0, 0))
        kind = "ingress_clients" if local == ingress_port and remote else "sink" if remote == sink_port else "own"
        counts["total"] += 1
        counts[kind] += 1
    return counts


def footprint(pid: int, ingress_port: int, sink_port: int) -> dict:
    """RSS (MiB) and open fds of the mesh process, and of its children summed."""
    children = []
    for child in descendants(pid):
        try:
            children.append((vm_rss_kib(child), open_fds(child)))
        except (FileNotFoundError, ProcessLookupError):
            pass  # a replica that ended between listing and reading
    return {"mesh_rss_mib": round(vm_rss_kib(pid) / 1024, 1), "mesh_fds": mesh_fds(pid, ingress_port, sink_port),
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
        self.sink_port = 0

    def footprint(self, pid: int) -> dict:
        return footprint(pid, self.port, self.sink_port)

    def disk(self) -> dict:
        """The event log's files, MiB: the WAL must not grow for ever (it did, until bounded)."""
        db = self.folder / "data" / "mesh.db"
        sizes = {name: (Path(f"{db}{suffix}").stat().st_size if Path(f"{db}{suffix}").exists() else 0)
                 for name, suffix in (("db_mib", ""), ("wal_mib", "-wal"))}
        return {name: round(size / 2**20, 1) for name, size in sizes.items()}

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
            self.sink_port = receiver.server.server_address[1]
            self.deploy(receiver)
            # The load outlasts the last sample a little, so that every sample is taken under it.
            load = Load(self.base + "/", self.rate, self.duration + LOAD_MARGIN)
            load.thread.start()
            self.watch(process.pid, load)
            load.thread.join()
            drained = self.drain()
            final = self.footprint(process.pid)
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
                      "backlog": pending(status), **self.footprint(pid), **self.disk()}
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
        # Fds the mesh holds of its own, after the drain (quiet: no connection or delivery
        # comes or goes) against the end of the warm-up: a leak would be there, jitter is not.
        fd_growth = final["mesh_fds"]["own"] - first["mesh_fds"]["own"]
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
            "mesh_fds": [s["mesh_fds"]["total"] for s in self.samples],
            "mesh_fds_own": [s["mesh_fds"]["own"] for s in self.samples],
            "mesh_fds_sink": [s["mesh_fds"]["sink"] for s in self.samples],
            "children_fds": [s["children_fds"] for s in self.samples],
            "wal_mib": [s["wal_mib"] for s in self.samples], "db_mib": [s["db_mib"] for s in self.samples],
            "after_drain": final,
            "mesh_rss_growth_pct": round(rss_growth, 2), "children_rss_growth_pct": round(children_growth, 2),
            "mesh_fd_growth": fd_growth,
            "pass": rss_growth < GROWTH_LIMIT_PCT and fd_growth <= 0 and drained,
            "samples": self.samples,
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=300, help="seconds of load (default 5 minutes)")
    parser.add_argument("--rate", type=float, default=30,
                        help="events/s, well below capacity (default 30: each is 4 deliveries, a reply and a retry)")
    parser.add_argument("--interval", type=float, default=60, help="seconds between samples (default 60)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        emit(Soak(Path(tmp), args.rate, args.duration, args.interval).run())


if __name__ == "__main__":
    main()
