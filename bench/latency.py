"""End-to-end latency at a fixed rate: from the client sending an event to the no-op
handler running, p50 and p99, through fmesh and through the peer pipeline, both at
the same rate (half the peer's maximum, measured in the same run unless --rate).

wrk cannot hold a fixed rate, so this file is also the load generator (run in its own
process: `python bench/latency.py generate ...`). It is open-loop: event i is due at
start + i/rate whatever happened to earlier ones, and carries its due time (wall clock)
in the `benchsent` extension; when no connection is free it waits for one, and that
wait counts as latency (no coordinated omission). The shared no-op handler
(bench/functions/noop/handler.py) appends `time.time() - benchsent` to a file per
pipeline; percentiles come from those samples. Runs alternate fmesh and peer.

It also reports the CPU time each pipeline's processes used per event at that rate
(user + system, from /proc): a figure of efficiency that other load on the machine
disturbs much less than rates and percentiles. fmesh is charged for the one or two
/v1/status polls after the load that see it drained; the peer's count costs it nothing.

    python bench/latency.py [--rate N] [--seconds 5] [--runs 3]
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import PYTHON, emit, median  # noqa: E402

MAX_CONNECTIONS = 256


# -- the generator (its own process) -------------------------------------------------------

def request_bytes(host: str, port: int, index: int, sent: float, size: int = 1024) -> bytes:
    head = (f"POST / HTTP/1.1\r\nhost: {host}:{port}\r\nce-specversion: 1.0\r\nce-type: bench.event\r\n"
            f"ce-source: /bench/latency\r\nce-id: lat-{index}\r\nce-benchsent: {sent:.6f}\r\n"
            f"content-type: application/octet-stream\r\ncontent-length: {size}\r\n\r\n")
    return head.encode() + b"x" * size


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time on it."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].decode("latin-1")
            length = next((int(line.split(":", 1)[1]) for line in head.split("\r\n")[1:]
                           if line.lower().startswith("content-length:")), 0)
            if len(self.buffer) < end + 4 + length:
                return  # the body is not all here yet
            self.buffer = self.buffer[end + 4 + length:]
            self.generator.answered(self, int(head.split(" ", 2)[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.generator.lost(self)


class Generator:
    def __init__(self, url: str, rate: float, seconds: float) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.rate, self.total = rate, int(rate * seconds)
        self.idle: list[Connection] = []
        self.backlog: deque[tuple[int, float]] = deque()   # due events waiting for a connection
        self.opening = 0
        self.connections = 0
        self.ok = self.failed = self.lost_count = 0
        self.lags: list[float] = []                      # actual send - due, seconds
        self.done = asyncio.Event()
        self.wall0 = self.mono0 = 0.0

    async def run(self) -> dict:
        loop = asyncio.get_running_loop()
        for _ in range(min(16, MAX_CONNECTIONS)):
            await self.open()
        self.wall0, self.mono0 = time.time(), loop.time()
        next_index = 0
        while next_index < self.total:
            due_count = min(self.total, int((loop.time() - self.mono0) * self.rate) + 1)
            for index in range(next_index, due_count):
                self.backlog.append((index, index / self.rate))
            next_index = due_count
            self.pump()
            await asyncio.sleep(max(0.0, self.mono0 + next_index / self.rate - loop.time()))
        try:
            await asyncio.wait_for(self.done.wait(), 60)
        except TimeoutError:
            pass
        return self.report()

    def pump(self) -> None:
        """Send backlog events on idle connections; open more while there are none."""
        loop = asyncio.get_running_loop()
        while self.backlog and self.idle:
            index, offset = self.backlog.popleft()
            self.lags.append(loop.time() - self.mono0 - offset)
            self.idle.pop().transport.write(  # type: ignore[union-attr]
                request_bytes(self.host, self.port, index, self.wall0 + offset))
        if self.backlog and self.connections + self.opening < MAX_CONNECTIONS:
            loop.create_task(self.open())

    async def open(self) -> None:
        self.opening += 1
        try:
            _, connection = await asyncio.get_running_loop().create_connection(
                lambda: Connection(self), self.host, self.port)
        finally:
            self.opening -= 1
        self.connections += 1
        self.release(connection)

    def release(self, connection: Connection) -> None:
        self.idle.append(connection)
        self.pump()

    def answered(self, connection: Connection, status: int) -> None:
        if 200 <= status < 300:
            self.ok += 1
        else:
            self.failed += 1
        self.release(connection)
        self.check_done()

    def lost(self, connection: Connection) -> None:
        self.connections -= 1
        self.lost_count += 1
        if connection in self.idle:
            self.idle.remove(connection)

    def check_done(self) -> None:
        if self.ok + self.failed >= self.total:
            self.done.set()

    def report(self) -> dict:
        lags = sorted(self.lags) or [0.0]
        return {"sent": self.total, "ok": self.ok, "failed": self.failed, "connections": self.connections,
                "send_lag_p99_ms": round(lags[int(len(lags) * 0.99)] * 1000, 2)}


def generate(url: str, rate: float, seconds: float) -> dict:
    """Run the generator in this process (with uvloop) and return its report."""
    import uvloop

    async def main() -> dict:
        generator = Generator(url, rate, seconds)
        try:
            return await generator.run()
        finally:
            for connection in generator.idle:
                connection.transport.close()  # type: ignore[union-attr]

    return uvloop.run(main())


# -- the measurement ---------------------------------------------------------------------

def fixed_rate_run(pipeline, rate: float, seconds: float, drain_timeout: float = 60) -> dict:  # type: ignore[no-untyped-def]
    """One run: truncate the samples file, send at `rate`, wait until handled, read the samples."""
    from bench.e2e import wait_handled
    from bench.footprint import cpu_seconds

    pipeline.latency_file.write_bytes(b"")
    before = pipeline.handled()
    cpu_before = cpu_seconds(pipeline.processes())
    out = subprocess.run([PYTHON, __file__, "generate", "--url", pipeline.url, "--rate", str(rate),
                          "--seconds", str(seconds)], capture_output=True, text=True, check=True,
                         timeout=seconds + 120)
    load = json.loads(out.stdout)
    wait_handled(pipeline, before + load["ok"], drain_timeout)
    cpu_ms = (cpu_seconds(pipeline.processes()) - cpu_before) * 1000
    samples = array.array("d", pipeline.latency_file.read_bytes())
    return {**percentiles(samples), "samples": len(samples), **load,
            "cpu_ms_per_event": round(cpu_ms / max(1, load["ok"]), 4)}


def percentiles(samples: array.array) -> dict:
    ordered = sorted(samples) or [float("nan")]

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000, 2)

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": round(ordered[-1] * 1000, 2)}


def measure(fmesh, peer, rate: float, runs: int, seconds: float) -> dict:  # type: ignore[no-untyped-def]
    pipelines = {"fmesh": fmesh, "peer": peer}
    results: dict[str, list[dict]] = {name: [] for name in pipelines}
    for pipeline in pipelines.values():
        fixed_rate_run(pipeline, rate, 1)  # warm-up at the same rate; its samples are dropped
    for _ in range(runs):
        for name, pipeline in pipelines.items():
            results[name].append(fixed_rate_run(pipeline, rate, seconds))
    summary = {name: {key: round(median([r[key] for r in rs]), 4) for key in ("p50_ms", "p99_ms", "cpu_ms_per_event")}
               for name, rs in results.items()}
    return {"bench": "latency", "rate_per_s": round(rate), "seconds": seconds,
            "fmesh_p50_ms": summary["fmesh"]["p50_ms"], "fmesh_p99_ms": summary["fmesh"]["p99_ms"],
            "peer_p50_ms": summary["peer"]["p50_ms"], "peer_p99_ms": summary["peer"]["p99_ms"],
            "ratio_p99": round(summary["fmesh"]["p99_ms"] / summary["peer"]["p99_ms"], 3),
            "ratio_p50": round(summary["fmesh"]["p50_ms"] / summary["peer"]["p50_ms"], 3),
            "fmesh_cpu_ms_per_event": summary["fmesh"]["cpu_ms_per_event"],
            "peer_cpu_ms_per_event": summary["peer"]["cpu_ms_per_event"],
            "runs": results}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    gen = sub.add_parser("generate", help="the fixed-rate load generator (used by the measurement)")
    gen.add_argument("--url", required=True)
    gen.add_argument("--rate", type=float, required=True)
    gen.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--rate", type=float, help="events/s (default: half the peer's measured maximum)")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.command == "generate":
        print(json.dumps(generate(args.url, args.rate, args.seconds)))
        return
    from bench.e2e import NOOP, FmeshPipeline, drained_rate
    from bench.peer.pipeline import PeerPipeline

    with tempfile.TemporaryDirectory() as tmp, FmeshPipeline(Path(tmp) / "fmesh") as fmesh, \
            PeerPipeline(Path(tmp) / "peer", f"{NOOP}:handle") as peer:
        rate = args.rate or median([drained_rate(peer, 3, 64)["rate"] for _ in range(2)]) / 2
        emit(measure(fmesh, peer, rate, args.runs, args.seconds))


if __name__ == "__main__":
    main()
