"""End to end: events/s delivered to a warm no-op Python function and acked, through
fmesh and through the peer pipeline a user would hand-build instead (FastAPI + NATS
JetStream + FastStream, see bench/peer/), in one run.

Method, identical for both: wrk posts 1 KiB binary-mode CloudEvents for `--seconds`;
then we wait until every event it had accepted (its 2xx count) was handled by the
no-op handler and acked; rate = handled / time from the start of the load until
drained. So a pipeline that accepts fast but delivers slowly is charged for its
backlog. fmesh's count is `delivered` in /v1/status (counted after the ack is
committed); the peer's is the subscriber's own count after each ack. Runs alternate
fmesh and peer, so drift hits both alike, and each waits until the side before it has
drained and gone idle (`wait_idle`). Prints JSON.

bench/run reports this as "end to end (drained burst)", for information: counting the
drain after the load, it hides a backlog that grows while the load lasts. The end-to-end
figure is bench/sustained.py's (delivered as accepted, at a fixed rate), which starts
its search from this rate.

    python bench/e2e.py [--seconds 5] [--runs 3] [--connections 64]
    python bench/e2e.py --profile DIR [--seconds 10] [--rate 2000]

`--profile DIR` instead runs fmesh alone under that load (wrk, or the fixed-rate
generator of bench/latency.py with --rate) with py-spy on the mesh and its replica,
writes their collapsed stacks (flamegraph.pl / speedscope can read them) to DIR and
prints, per thread, how busy it was and where its samples sat.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.common import PYTHON, emit, free_port, median, mesh, wait_http, wrk  # noqa: E402
from bench.peer.pipeline import PeerPipeline  # noqa: E402

NOOP = ROOT / "bench" / "functions" / "noop" / "handler.py"
EVENT_TYPE = "bench.event"
TOKEN = "bench"
SPY_FLAGS: list[str] = []  # e.g. ["--gil"]: only samples holding the GIL

# min 1: the function is warm before the load starts. One replica, as the peer has one
# subscriber process; concurrency 64 lets the sidecar claim and deliver in batches (the
# peer's push consumer has up to 1,000 unacked messages in flight). 64 delivered more
# than 8 or 32 here and about as much as 256.
MANIFEST = """
functions:
  noop:
    handler: {handler}:handle
    on: [{{type: {event_type}}}]
    env: {{BENCH_LATENCY_FILE: "{latency_file}"}}
    scale: {{min: 1, max: 1, concurrency: {concurrency}, idle_timeout: 10m}}
"""


class FmeshPipeline:
    """`fmesh up` with the no-op function deployed and warm, for the length of a `with` block."""

    def __init__(self, folder: Path, concurrency: int = 64, extra: tuple[str, ...] = ()) -> None:
        self.folder = folder
        self.latency_file = folder / "latency.f64"  # the handler's samples (bench/latency.py)
        self.concurrency = concurrency
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.base + "/"
        self._process = mesh(self.port, folder / "data", *extra, log=folder / "mesh.log")
        self._client = httpx.Client(headers={"authorization": f"Bearer {TOKEN}"}, timeout=60)

    def __enter__(self) -> FmeshPipeline:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._process.__enter__()
        try:
            wait_http(self.base + "/healthz", timeout=120)  # a loaded machine starts slowly
            self._deploy()
            self._wait_warm()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()
        self._process.__exit__()

    @property
    def pid(self) -> int:
        return self._process.pid

    def _deploy(self) -> None:
        manifest = self.folder / "fmesh.yaml"
        manifest.write_text(MANIFEST.format(handler=NOOP, event_type=EVENT_TYPE, latency_file=self.latency_file,
                                            concurrency=self.concurrency))
        subprocess.run([PYTHON, "-m", "fmesh.cli", "deploy", "-f", str(manifest), "--mesh", self.base,
                        "--token", TOKEN], check=True, capture_output=True)

    def _wait_warm(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.status()["ready"] < 1:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the noop function had no ready replica after {timeout}s: {self.status()}")
            time.sleep(0.05)

    def status(self) -> dict:
        for attempt in range(3):
            try:
                functions = self._client.get(self.base + "/v1/status").json()["functions"]
                return next(f for f in functions if f["name"] == "noop")
            except httpx.TransportError:
                # the mesh closes a keep-alive connection idle for 5 s: when a poll reuses it
                # just then, it is reset; a new connection is the client's ordinary answer
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def processes(self) -> list[int]:
        """The mesh, its zygote and the replica: what CPU per event is charged to."""
        from bench.footprint import descendants

        return [self.pid, *descendants(self.pid)]

    def handled(self) -> int:
        """Events the function handled and fmesh acked (committed), as /v1/status counts them."""
        return self.status()["delivered"]

    def backlog(self) -> int:
        """Deliveries stored and not acked yet (claimed or not), and any in flight."""
        status = self.status()
        return status["pending"] + status["inflight"]


def drained_rate(pipeline, seconds: int, connections: int, drain_timeout: float = 90) -> dict:  # type: ignore[no-untyped-def]
    """Load for `seconds`, wait until every accepted event was handled; handled/s over the whole time."""
    before = pipeline.handled()
    started = time.monotonic()
    load = wrk(pipeline.url, seconds, connections, event_type=EVENT_TYPE)
    load_ended = time.monotonic()
    during_load = pipeline.handled() - before  # diagnostics: delivery pace with and without ingress
    accepted = load["requests"] - load["non_2xx"]
    handled = wait_handled(pipeline, before + accepted, drain_timeout) - before
    elapsed = time.monotonic() - started
    load_s, drain_s = load_ended - started, elapsed - (load_ended - started)
    return {"rate": handled / elapsed, "accepted": accepted, "handled": handled,
            "ingress_rps": load["ok_rps"], "load_s": round(load_s, 2), "drain_s": round(drain_s, 2),
            "handled_per_s_during_load": round(during_load / load_s),
            "handled_per_s_while_draining": round((handled - during_load) / drain_s) if drain_s > 0.2 else None,
            "non_2xx": load["non_2xx"], "drained": handled >= accepted}


def wait_handled(pipeline, target: int, timeout: float, interval: float = 0.1) -> int:  # type: ignore[no-untyped-def]
    """Poll the handled count until it reaches `target` (or stops at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        count = pipeline.handled()
        if count >= target or time.monotonic() > deadline:
            return count
        time.sleep(interval)


def wait_idle(pipeline, timeout: float = 120, quiet_cpu: float = 0.2) -> dict:  # type: ignore[no-untyped-def]
    """Wait until the pipeline has nothing left to deliver and its count stands still, then
    (briefly) until its processes use less than `quiet_cpu` of a core: so the next side is
    never measured while this one still drains. Raises if it does not drain in `timeout`."""
    from bench.footprint import cpu_seconds

    started = time.monotonic()
    deadline = started + timeout
    while True:
        backlog, count = pipeline.backlog(), pipeline.handled()
        time.sleep(0.3)
        if backlog == 0 and pipeline.handled() == count:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{type(pipeline).__name__} still has {backlog} events to deliver after {timeout}s")
    quiet_deadline = time.monotonic() + 5  # background work (trail, checkpoints) settling: waited for, not asserted
    while time.monotonic() < quiet_deadline:
        before = cpu_seconds(pipeline.processes())
        time.sleep(0.5)
        if cpu_seconds(pipeline.processes()) - before < quiet_cpu * 0.5:
            break
    return {"idle_after_s": round(time.monotonic() - started, 2), "handled": pipeline.handled()}


def measure(fmesh: FmeshPipeline, peer: PeerPipeline, runs: int, seconds: int, connections: int) -> dict:
    results: dict[str, list[dict]] = {"fmesh": [], "peer": []}
    for pipeline in (fmesh, peer):  # a short warm-up each, not counted
        drained_rate(pipeline, 1, connections)
        wait_idle(pipeline)
    for _ in range(runs):
        for name, pipeline in (("fmesh", fmesh), ("peer", peer)):
            results[name].append(drained_rate(pipeline, seconds, connections))
            wait_idle(pipeline)  # never measure one side while the other still drains
    return summarize(results)


def summarize(results: dict[str, list[dict]]) -> dict:
    fmesh = median([r["rate"] for r in results["fmesh"]])
    peer = median([r["rate"] for r in results["peer"]])
    return {"bench": "e2e", "event_bytes": 1024, "fmesh_per_s_median": round(fmesh),
            "peer_per_s_median": round(peer), "ratio": round(fmesh / peer, 3),
            "fmesh_ingress_rps_median": round(median([r["ingress_rps"] for r in results["fmesh"]])),
            "peer_ingress_rps_median": round(median([r["ingress_rps"] for r in results["peer"]])),
            "all_drained": all(r["drained"] for runs in results.values() for r in runs),
            "runs": {name: [{k: round(v) if isinstance(v, float) and k == "rate" else v for k, v in r.items()}
                            for r in runs] for name, runs in results.items()}}


# -- profiling (--profile) --------------------------------------------------------------------

def profile(folder: Path, seconds: int, connections: int, out: Path, rate: float | None = None) -> dict:
    """py-spy on the mesh and its replica during end-to-end load (wrk, or a fixed `rate` so that
    ingress and delivery run at the same pace); collapsed stacks and a summary."""
    from bench.footprint import children, command_of
    from bench.latency import fixed_rate_run

    spy = shutil.which("py-spy", path=str(Path(PYTHON).parent)) or shutil.which("py-spy")
    if spy is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    out.mkdir(parents=True, exist_ok=True)
    with FmeshPipeline(folder) as fmesh:
        zygote = next(p for p in children(fmesh.pid) if "zygote" in command_of(p))
        targets = {"mesh": fmesh.pid, "replica": children(zygote)[0]}
        outcome: dict = {}

        def run_load() -> None:  # what the load came to, beside where the time went
            outcome.update(fixed_rate_run(fmesh, rate, seconds + 2) if rate else
                           drained_rate(fmesh, seconds + 2, connections))
            if rate:
                outcome["handled_per_s_during"] = round(
                    (outcome["handled_at_end"] - outcome["handled_at_start"]) / outcome["window_s"])

        load = threading.Thread(target=run_load)
        load.start()
        time.sleep(1)  # profile the steady state, not the first second
        spies = [subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
                                   "--format", "raw", "--nolineno", "--threads", "--nonblocking", *SPY_FLAGS,
                                   "--output", str(out / f"{name}.txt")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                  for name, pid in targets.items()]
        for process in spies:
            process.wait()
        load.join()
    keep = ("rate", "offered", "ok", "failed", "non_2xx", "handled", "handled_at_start", "handled_at_end",
            "window_s", "p50_ms", "p99_ms", "send_lag_p99_ms", "accepted", "ingress_rps", "drain_s",
            "handled_per_s_during_load", "handled_per_s_during")
    return {"load": {key: outcome[key] for key in keep if key in outcome},
            **{name: summarize_stacks(out / f"{name}.txt", 200, seconds) for name in targets}}


def summarize_stacks(path: Path, rate: int, seconds: int, top: int = 30) -> dict:
    """Per thread: how busy it was (samples / possible samples), and the frames where its
    samples sat on top (self) or anywhere below the event loop (inclusive), in % of its samples."""
    stacks: dict[str, list[tuple[list[str], int]]] = collections.defaultdict(list)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")  # py-spy already shortens file names
        stacks[frames[0]].append((frames[1:] or ["(no Python frame)"], int(count)))
    return {thread: thread_summary(rows, rate * seconds, top) for thread, rows in stacks.items()}


def thread_summary(rows: list[tuple[list[str], int]], possible: int, top: int) -> dict:
    total = sum(n for _, n in rows)
    self_time: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    for frames, samples in rows:
        self_time[frames[-1]] += samples
        for frame in set(frames[loop_depth(frames):]):
            inclusive[frame] += samples

    def share(counter: collections.Counter) -> dict:
        return {frame: round(100 * n / total, 1) for frame, n in counter.most_common(top)}

    return {"samples": total, "busy_pct": round(100 * total / possible, 1), "self_pct": share(self_time),
            "inclusive_pct": share(inclusive)}


def loop_depth(frames: list[str]) -> int:
    """Index of the first frame below the event loop's (or thread's) dispatch: what ran, not how."""
    for index in range(len(frames) - 1, -1, -1):
        if frames[index].startswith(("Handle._run ", "Thread.run ", "BaseEventLoop._run_once ")):
            return index + 1
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="instead: profile fmesh under this load with py-spy, collapsed stacks into DIR")
    parser.add_argument("--rate", type=float, help="with --profile: a fixed rate (events/s) instead of wrk")
    args = parser.parse_args()
    if args.profile:
        with tempfile.TemporaryDirectory() as tmp:
            emit(profile(Path(tmp), args.seconds, args.connections, args.profile, args.rate))
        return
    with tempfile.TemporaryDirectory() as tmp, FmeshPipeline(Path(tmp) / "fmesh") as fmesh, \
            PeerPipeline(Path(tmp) / "peer", f"{NOOP}:handle") as peer:
        result = measure(fmesh, peer, args.runs, args.seconds, args.connections)
    emit(result)


if __name__ == "__main__":
    main()
