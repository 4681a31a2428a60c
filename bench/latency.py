"""End-to-end latency at a fixed rate: from the client sending an event to the no-op
handler running, p50 and p99, through fmesh and through the peer pipeline, both at
the same rate (half the peer's maximum, measured in the same run unless --rate).

wrk cannot hold a fixed rate, so this file is also the load generator (run in its own
process: `python bench/latency.py generate ...`). It is open-loop: event i is due at
start + i/rate whatever happened to earlier ones, and joins the send queue at the first
wake of the generator's 1 ms timer after that; it carries that moment, or its due time
plus one tick if the generator woke later still (wall clock), in the `benchsent`
extension. So the timer's own lateness (at most a tick) is the generator's and does not
count, while a longer stall and a wait in the queue for a free connection count as
latency (no coordinated omission). `send_lag_p99_ms` reports all of it, from due time.
The shared no-op handler
(bench/functions/noop/handler.py) appends `time.time() - benchsent` to a file per
pipeline; percentiles come from those samples. Runs alternate fmesh and peer, and each
waits until the other side has drained and is idle.

A run counts only if it is complete: every event answered 2xx, every accepted event
handled, and exactly one sample per accepted event. Otherwise its problems are listed,
`all_complete` is false (bench/run then marks the figure not met) and this script exits
non-zero after printing its JSON. bench/sustained.py uses the same generator with
`--window` (events not sent by the end of the window are dropped, not sent late).

It also reports the CPU time each pipeline's processes used per event at that rate
(user + system, from /proc): a figure of efficiency that other load on the machine
disturbs much less than rates and percentiles. fmesh is charged for the one or two
/v1/status polls after the load that see it drained; the peer's count costs it nothing.

    python bench/latency.py [--rate N] [--seconds 5] [--runs 4]
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
from collections import Counter, deque
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import PYTHON, emit, in_turn, median, median_ratio  # noqa: E402

MAX_CONNECTIONS = 256
# The shortest wait between two sends: uvloop's timers count whole milliseconds, and a
# shorter sleep returns at once, so at rates past 1,000/s the generator spun a whole core
# (taking it from the pipeline it measures). Events due meanwhile go out together, each
# timed from the moment it joined the queue.
TICK_S = 0.001


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
        self.busy = False  # a request sent on it is not answered yet

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
            self.busy = False
            self.generator.answered(self, int(head.split(" ", 2)[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.generator.lost(self)


class Generator:
    """Offers `rate` events/s for `seconds`. With `window`, an event not sent by the end of the
    window (no connection came free in time) is not sent at all but counted as unsent, so
    what the pipeline accepted is measured against what was offered in that window; without
    it, every event is sent however late. A refusal (non-2xx) is counted, never retried.

    Prints a JSON line when the load starts and one when the window ends (so the caller
    can read its own counters at those moments), then its report."""

    def __init__(self, url: str, rate: float, seconds: float, window: bool = False) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.rate, self.seconds, self.total, self.window = rate, seconds, int(rate * seconds), window
        self.idle: list[Connection] = []
        self.backlog: deque[tuple[int, float]] = deque()   # (index, when queued) of events waiting to go
        self.opening = 0
        self.connections = 0
        self.ok = self.failed = self.lost_count = self.dropped = self.sent = self.unsent = 0
        self.statuses: Counter[str] = Counter()          # non-2xx answers by status code
        self.lags: list[float] = []                      # actual send - due, seconds
        self.done = asyncio.Event()
        self.wall0 = self.mono0 = 0.0

    async def run(self) -> dict:
        for _ in range(min(16, MAX_CONNECTIONS)):
            await self.open()
        self.wall0, self.mono0 = time.time(), time.monotonic()
        mark("start")
        next_index = 0
        while next_index < self.total:
            now = time.monotonic() - self.mono0
            due_count = min(self.total, int(now * self.rate) + 1)
            for index in range(next_index, due_count):
                # Its clock starts when it was queued, but no later than a tick after it was due:
                # a generator late for longer (busy, or descheduled) must not hide that wait.
                self.backlog.append((index, min(now, index / self.rate + TICK_S)))
            next_index = due_count
            self.pump()
            await asyncio.sleep(max(TICK_S, self.mono0 + next_index / self.rate - time.monotonic()))
        if self.window:
            await asyncio.sleep(max(0.0, self.mono0 + self.seconds - time.monotonic()))
            self.unsent = len(self.backlog)
            self.backlog.clear()
        mark("end", ok=self.ok)
        self.check_done()
        try:
            await asyncio.wait_for(self.done.wait(), 10 if self.window else 60)
        except TimeoutError:
            pass
        return self.report()

    def pump(self) -> None:
        """Send backlog events on idle connections; open more while there are none."""
        loop = asyncio.get_running_loop()
        while self.backlog and self.idle:
            index, queued = self.backlog.popleft()
            self.lags.append(time.monotonic() - self.mono0 - index / self.rate)
            connection = self.idle.pop()
            connection.busy = True
            self.sent += 1
            connection.transport.write(  # type: ignore[union-attr]
                request_bytes(self.host, self.port, index, self.wall0 + queued))
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
            self.statuses[str(status)] += 1
        self.release(connection)
        self.check_done()

    def lost(self, connection: Connection) -> None:
        self.connections -= 1
        self.lost_count += 1
        if connection.busy:  # closed with a request unanswered: that event got no answer at all
            self.dropped += 1
            self.check_done()
        if connection in self.idle:
            self.idle.remove(connection)

    def check_done(self) -> None:
        if self.ok + self.failed + self.dropped + self.unsent >= self.total:
            self.done.set()

    def report(self) -> dict:
        lags = sorted(self.lags) or [0.0]
        return {"offered": self.total, "sent": self.sent, "ok": self.ok, "failed": self.failed,
                "non_2xx": dict(self.statuses), "unanswered": self.sent - self.ok - self.failed,
                "unsent": self.unsent, "connections": self.connections, "connections_lost": self.lost_count,
                "send_lag_p99_ms": round(lags[int(len(lags) * 0.99)] * 1000, 2)}


def mark(name: str, **fields: object) -> None:
    """A progress line on stdout for the caller, at once (not at exit)."""
    print(json.dumps({"mark": name, **fields}), flush=True)


def generate(url: str, rate: float, seconds: float, window: bool = False) -> dict:
    """Run the generator in this process (with uvloop) and return its report."""
    import uvloop

    async def main() -> dict:
        generator = Generator(url, rate, seconds, window)
        try:
            return await generator.run()
        finally:
            for connection in generator.idle:
                connection.transport.close()  # type: ignore[union-attr]

    return uvloop.run(main())


# -- the measurement ---------------------------------------------------------------------

def offer(pipeline, rate: float, seconds: float, window: bool = False) -> dict:  # type: ignore[no-untyped-def]
    """Run the generator (its own process) against the pipeline; read the pipeline's handled
    count when the load starts and when its window ends. Returns the generator's report with
    `handled_at_start`, `handled_at_end`, `window_s` (the time between those two reads) and
    `ended_at` (monotonic time of the second)."""
    command = [PYTHON, __file__, "generate", "--url", pipeline.url, "--rate", str(rate), "--seconds", str(seconds)]
    process = subprocess.Popen([*command, *(["--window"] if window else [])], stdout=subprocess.PIPE, text=True)
    marks: dict[str, tuple[float, int]] = {}
    try:
        for line in process.stdout:  # type: ignore[union-attr]
            message = json.loads(line)
            if "mark" not in message:
                report = message
                break
            marks[message["mark"]] = (time.monotonic(), pipeline.handled())
        else:
            raise RuntimeError(f"the load generator exited with {process.wait()} before its report")
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    (start, at_start), (end, at_end) = marks["start"], marks["end"]
    return {**report, "handled_at_start": at_start, "handled_at_end": at_end, "window_s": round(end - start, 3),
            "ended_at": end}


def fixed_rate_run(pipeline, rate: float, seconds: float, drain_timeout: float = 60) -> dict:  # type: ignore[no-untyped-def]
    """One run: truncate the samples file, send at `rate`, wait until handled, read the samples.

    `complete` says the run counts: every event was answered 2xx, every accepted event was
    handled, and the handler recorded exactly one sample per accepted event (no more: none
    of an earlier run drained into this one; no fewer: none lost or still pending)."""
    from bench.e2e import wait_handled
    from bench.footprint import cpu_seconds

    pipeline.latency_file.write_bytes(b"")
    before = pipeline.handled()
    cpu_before = cpu_seconds(pipeline.processes())
    load = offer(pipeline, rate, seconds)
    handled = wait_handled(pipeline, before + load["ok"], drain_timeout) - before
    cpu_ms = (cpu_seconds(pipeline.processes()) - cpu_before) * 1000
    samples = array.array("d", pipeline.latency_file.read_bytes())
    problems = [problem for problem, bad in (
        (f"{load['offered'] - load['ok']} of {load['offered']} not accepted", load["ok"] < load["offered"]),
        (f"{load['ok'] - handled} accepted not handled after {drain_timeout}s", handled < load["ok"]),
        (f"{len(samples)} samples for {load['ok']} accepted", len(samples) != load["ok"])) if bad]
    return {**percentiles(samples), "samples": len(samples), "handled": handled, **load,
            "cpu_ms_per_event": round(cpu_ms / max(1, load["ok"]), 4), "complete": not problems,
            "problems": problems}


def percentiles(samples: array.array) -> dict:
    ordered = sorted(samples) or [float("nan")]

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000, 2)

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": round(ordered[-1] * 1000, 2)}


def run_ratio(results: dict[str, list[dict]], key: str) -> float:
    return median_ratio([r[key] for r in results["fmesh"]], [r[key] for r in results["peer"]])


def measure(fmesh, peer, rate: float, runs: int, seconds: float) -> dict:  # type: ignore[no-untyped-def]
    from bench.e2e import wait_idle

    pipelines = {"fmesh": fmesh, "peer": peer}
    results: dict[str, list[dict]] = {name: [] for name in pipelines}
    for pipeline in pipelines.values():
        fixed_rate_run(pipeline, rate, 1)  # warm-up at the same rate; its samples are dropped
        wait_idle(pipeline)
    for run in range(runs):  # ABBA pairs, their ratios taken (bench/common.py)
        for name, pipeline in in_turn(run, tuple(pipelines.items())):
            results[name].append(fixed_rate_run(pipeline, rate, seconds))
            wait_idle(pipeline)  # never measure one side while the other still drains
    summary = {name: {key: round(median([r[key] for r in rs]), 4) for key in ("p50_ms", "p99_ms", "cpu_ms_per_event")}
               for name, rs in results.items()}
    problems = {name: [p for r in rs for p in r["problems"]] for name, rs in results.items()}
    return {"bench": "latency", "rate_per_s": round(rate), "seconds": seconds,
            "fmesh_p50_ms": summary["fmesh"]["p50_ms"], "fmesh_p99_ms": summary["fmesh"]["p99_ms"],
            "peer_p50_ms": summary["peer"]["p50_ms"], "peer_p99_ms": summary["peer"]["p99_ms"],
            "ratio_p99": run_ratio(results, "p99_ms"), "ratio_p50": run_ratio(results, "p50_ms"),
            "ratio_cpu": run_ratio(results, "cpu_ms_per_event"),
            "fmesh_cpu_ms_per_event": summary["fmesh"]["cpu_ms_per_event"],
            "peer_cpu_ms_per_event": summary["peer"]["cpu_ms_per_event"],
            "all_complete": not any(problems.values()), "problems": problems,
            "runs": results}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    gen = sub.add_parser("generate", help="the fixed-rate load generator (used by the measurement)")
    gen.add_argument("--url", required=True)
    gen.add_argument("--rate", type=float, required=True)
    gen.add_argument("--seconds", type=float, required=True)
    gen.add_argument("--window", action="store_true", help="drop events not sent by the end of --seconds")
    parser.add_argument("--rate", type=float, help="events/s (default: half the peer's measured maximum)")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()
    if args.command == "generate":
        print(json.dumps(generate(args.url, args.rate, args.seconds, args.window)))
        return
    from bench.e2e import NOOP, FmeshPipeline, drained_rate
    from bench.peer.pipeline import PeerPipeline

    with tempfile.TemporaryDirectory() as tmp, FmeshPipeline(Path(tmp) / "fmesh") as fmesh, \
            PeerPipeline(Path(tmp) / "peer", f"{NOOP}:handle") as peer:
        rate = args.rate or median([drained_rate(peer, 3, 64)["rate"] for _ in range(2)]) / 2
        result = measure(fmesh, peer, rate, args.runs, args.seconds)
    emit(result)
    if not result["all_complete"]:
        sys.exit(f"incomplete runs, the percentiles do not count: {result['problems']}")


if __name__ == "__main__":
    main()
