"""Chaos run: a fixed number of events into a mesh while, at random moments, its replicas
are SIGKILLed, the mesh itself is SIGKILLed and restarted on the same data dir and port,
and the connections of its sink and its bridge are cut or slowed down through loopback
TCP proxies. At the end every accepted event (one that got a 202) must have reached each
of its three destinations, or be a dead letter there with a reason: none lost.

    driver ──POST /──▶ mesh A ──▶ function `record` (appends each id to a file)
                         │──▶ subscription `audit` ──▶ proxy ──▶ Receiver (HTTP sink)
                         └──▶ bridge `to-b`        ──▶ proxy ──▶ mesh B ──▶ function `append`

Delivery is at least once: duplicates are counted, not failures; distinct ids decide.
The driver retries an event (same id) on connection errors and 5xx while A is down, and
counts it accepted only on a 202. Prints JSON: events sent and accepted, per destination
what was delivered, dead-lettered (by reason), duplicated and lost, the chaos actions
survived of each kind, the seed and the duration. Exits 1 if anything was lost.

    python bench/chaos.py [--events 3000] [--seed N] [--duration 60] [--every 2.0] [--settle 180]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the tests' Mesh, Receiver and TcpProxy

import httpx  # noqa: E402
from proxy import TcpProxy  # noqa: E402
from support import FIXTURES, Mesh, Receiver, free_port, wait_for  # noqa: E402

APPEND = FIXTURES / "functions" / "append" / "handler.py"
EVENT_TYPE = "chaos.event"
SINK_TIMEOUT = 1.0  # the sink's and the bridge's per-attempt timeouts; a "long" delay exceeds them
BRIDGE_TIMEOUT = 2.0
START_TIMEOUT = 90.0  # a mesh's start, on a loaded machine
KINDS = ("replica_kill", "mesh_kill", "sink_cut", "sink_delay", "bridge_cut", "bridge_delay")
DESTINATIONS = {"function": "function:record", "sink": "subscription:audit", "bridge": "bridge:to-b"}

A_MANIFEST = f"""
functions:
  record:
    handler: {APPEND}:handle
    on: [{{type: {EVENT_TYPE}}}]
    env: {{APPEND_TO: "{{out}}"}}
    scale: {{min: 1, max: 2, concurrency: 8}}
    timeout: 5s
    delivery: {{retries: 6, delay: 100ms, max_delay: 1s}}
subscriptions:
  audit:
    filter: {{type: {EVENT_TYPE}}}
    to: {{sink}}/events
    delivery: {{retries: 4, delay: 200ms, max_delay: 1s, timeout: {SINK_TIMEOUT}s}}
    concurrency: 16
bridges:
  to-b:
    to: {{bridge}}
    filter: {{type: {EVENT_TYPE}}}
    delivery: {{delay: 100ms, max_delay: 1s, timeout: {BRIDGE_TIMEOUT}s}}
"""
B_MANIFEST = f"""
functions:
  append:
    handler: {APPEND}:handle
    on: [{{type: {EVENT_TYPE}}}]
    env: {{APPEND_TO: "{{out}}"}}
    scale: {{max: 2, concurrency: 8}}
"""


def start(mesh: Mesh, *args: str) -> None:
    mesh.start(*args, wait=False)
    wait_for(mesh.healthy, START_TIMEOUT, 0.1, message=f"mesh on {mesh.url} to start:\n{mesh.log()[-3000:]}")


def first_start(mesh: Mesh, *args: str, tries: int = 3) -> None:
    """Start a new mesh; on a busy machine its free port may be taken before it binds: pick another."""
    for _ in range(tries - 1):
        try:
            return start(mesh, *args)
        except AssertionError:
            if "already in use" not in mesh.log():
                raise
            mesh.port = free_port()
            mesh.url = f"http://127.0.0.1:{mesh.port}"
            mesh.output = mesh.data_dir.parent / f"mesh-{mesh.port}.out"
    start(mesh, *args)


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} chaos: {message}", file=sys.stderr, flush=True)


def ids_in(path: Path) -> Counter:
    return Counter(path.read_text().split()) if path.exists() else Counter()


def children(pid: int) -> list[int]:
    """Pids whose parent is `pid`, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def replica_pids(mesh_pid: int) -> list[int]:
    """The mesh forks a zygote, the zygote forks the replicas: the mesh's grandchildren."""
    return [replica for child in children(mesh_pid) for replica in children(child)]


class Driver:
    """Posts `events` events, paced over `duration` seconds, each until it gets a 202."""

    def __init__(self, url: str, events: int, duration: float, concurrency: int = 8) -> None:
        self.url, self.events, self.duration, self.concurrency = url, events, duration, concurrency
        self.accepted: set[str] = set()
        self.retries = 0  # posts that failed (the mesh was down) and were sent again
        self.refused: dict[str, int] = {}  # an event the mesh turned down for good (a 4xx), by id

    async def run(self) -> None:
        started = time.monotonic()
        pending = list(range(self.events))
        pending.reverse()

        async def worker(client: httpx.AsyncClient) -> None:
            while pending:
                i = pending.pop()
                await asyncio.sleep(max(0.0, started + i * self.duration / self.events - time.monotonic()))
                await self.post(client, f"chaos-{i}", i)

        async with httpx.AsyncClient(timeout=5) as client:
            await asyncio.gather(*(worker(client) for _ in range(self.concurrency)))

    async def post(self, client: httpx.AsyncClient, event_id: str, i: int) -> None:
        headers = {"ce-specversion": "1.0", "ce-id": event_id, "ce-source": "/chaos", "ce-type": EVENT_TYPE,
                   "content-type": "application/json"}
        while True:
            try:
                answer = await client.post(self.url + "/", headers=headers, content=b'{"i": %d}' % i)
            except httpx.HTTPError:
                answer = None  # the mesh is down (or was killed mid-request): not accepted, try again
            if answer is not None and answer.status_code == 202:
                self.accepted.add(event_id)
                return
            if answer is not None and 400 <= answer.status_code < 500 and answer.status_code != 429:
                self.refused[event_id] = answer.status_code
                return
            self.retries += 1
            await asyncio.sleep(0.1)


class Chaos:
    """At random moments (seeded), one of KINDS; the first len(KINDS) actions are each kind
    once, and `stop` waits for those."""

    def __init__(self, rng: random.Random, mesh: Mesh, sink: TcpProxy, bridge: TcpProxy, every: float) -> None:
        self.rng, self.mesh, self.proxies, self.every = rng, mesh, {"sink": sink, "bridge": bridge}, every
        self.survived: Counter = Counter()
        self.skipped: Counter = Counter()  # an action that found nothing to do (no replica running)
        self.restarts: list[float] = []  # seconds from each restart of the mesh to its /healthz answering
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="chaos", daemon=True)
        self.error: BaseException | None = None
        self._timers: list[threading.Timer] = []

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()
        for timer in self._timers:
            timer.cancel()
        for proxy in self.proxies.values():
            proxy.heal()

    def _loop(self) -> None:
        schedule = list(KINDS)
        self.rng.shuffle(schedule)
        try:
            while True:
                pause = self.rng.uniform(0.3, 1.7) * self.every
                if self.stopping.wait(pause):
                    if not schedule:
                        return
                    time.sleep(pause)  # the events are all in: only the kinds not done yet
                kind = schedule.pop(0) if schedule else self.rng.choice(KINDS)
                getattr(self, kind)()
        except BaseException as exc:  # noqa: BLE001 - reported by the run, not lost in a thread
            self.error = exc
            log(f"chaos stopped: {exc!r}")

    def replica_kill(self) -> None:
        pids = replica_pids(self.mesh.process.pid)  # type: ignore[union-attr]
        if not pids:
            self.skipped["replica_kill"] += 1
            return
        victim = self.rng.choice(pids)
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            self.skipped["replica_kill"] += 1
            return
        self.survived["replica_kill"] += 1
        log(f"SIGKILL replica {victim}")

    def mesh_kill(self) -> None:
        """SIGKILL the mesh and start it again; one time in three, SIGKILL it again while it
        is starting (restoring what was deployed, forking replicas, delivering the backlog)."""
        down = self.rng.uniform(0.0, 1.5)
        self.mesh.kill()
        log(f"SIGKILL mesh; back in {down:.1f}s")
        time.sleep(down)
        if self.rng.random() < 1 / 3:
            self.mesh.start(wait=False)
            early = self.rng.uniform(0.2, 3.0)
            time.sleep(early)
            self.mesh.kill()
            self.survived["mesh_kill_starting"] += 1
            log(f"SIGKILL mesh again {early:.1f}s into its start")
        started = time.monotonic()
        start(self.mesh)
        self.restarts.append(time.monotonic() - started)
        self.survived["mesh_kill"] += 1
        log(f"mesh restarted in {self.restarts[-1]:.1f}s")

    def _cut(self, name: str) -> None:
        seconds = self.rng.uniform(0.5, 3.0)
        cut = self.proxies[name].cut(seconds)
        self.survived[f"{name}_cut"] += 1
        log(f"cut {name}: {cut} connections reset, refusing for {seconds:.1f}s")

    def _delay(self, name: str, timeout: float) -> None:
        proxy = self.proxies[name]
        proxy.delay = self.rng.choice([0.2 * timeout, 1.5 * timeout])  # within the timeout, or past it
        seconds = self.rng.uniform(1.0, 4.0)
        timer = threading.Timer(seconds, lambda: setattr(proxy, "delay", 0.0))
        timer.daemon = True
        timer.start()
        self._timers.append(timer)
        self.survived[f"{name}_delay"] += 1
        log(f"delay {name}: {proxy.delay:.2f}s per chunk for {seconds:.1f}s")

    def sink_cut(self) -> None:
        self._cut("sink")

    def bridge_cut(self) -> None:
        self._cut("bridge")

    def sink_delay(self) -> None:
        self._delay("sink", SINK_TIMEOUT)

    def bridge_delay(self) -> None:
        self._delay("bridge", BRIDGE_TIMEOUT)


def dead_letters(mesh: Mesh) -> list[dict]:
    return mesh.api("GET", "/v1/dead-letters", params={"limit": 100_000}).json()["dead_letters"]


def explained(letter: dict) -> bool:
    """A dead letter with a reason, and the extensions saying where and how it failed."""
    attributes = letter["event"]["attributes"]
    return bool(letter["reason"]) and attributes.get("fmesherrordest") == letter["subscription"] and bool(
        attributes.get("fmesherrordata"))


def account(accepted: set[str], seen: dict[str, Counter], letters: list[dict]) -> dict:
    """Per destination: delivered (distinct ids), dead-lettered with a reason, duplicates, lost."""
    report = {}
    for name, subscription in DESTINATIONS.items():
        mine = [d for d in letters if d["subscription"] == subscription]
        lettered = {d["event"]["attributes"]["id"] for d in mine if explained(d)}
        delivered = set(seen[name]) & accepted
        lost = sorted(accepted - delivered - lettered)
        report[name] = {"delivered": len(delivered), "dead_lettered": len(lettered & accepted),
                        "dead_letter_reasons": dict(Counter(d["reason"] for d in mine)),
                        "dead_letters_without_reason": sum(1 for d in mine if not explained(d)),
                        "dead_letter_errors": {d["reason"]: d["error"] for d in mine},  # one of each
                        "duplicates": sum(n - 1 for n in seen[name].values()), "lost": len(lost),
                        "lost_ids": lost[:10]}
    return report


def seen_at(sink: Receiver, out_a: Path, out_b: Path) -> dict[str, Counter]:
    return {"function": ids_in(out_a), "bridge": ids_in(out_b),
            "sink": Counter(r["headers"].get("ce-id") for r in sink.to("/events"))}


def settle(mesh: Mesh, accepted: set[str], seen, timeout: float) -> dict:
    """Poll (bounded) until nothing accepted is unaccounted for; the last accounting."""
    deadline = time.monotonic() + timeout
    while True:
        report = account(accepted, seen(), dead_letters(mesh))
        if all(r["lost"] == 0 for r in report.values()) or time.monotonic() > deadline:
            return report
        time.sleep(1.0)


def run(events: int, seed: int, duration: float, every: float, settle_timeout: float, folder: Path) -> dict:
    rng = random.Random(seed)
    out_a, out_b = folder / "a.ids", folder / "b.ids"
    receiver = Receiver()
    receiver.server.handle_error = lambda *args: None  # a connection the proxy reset: expected here
    b = Mesh(folder / "b" / "data", token="chaos", extra=["--mesh-id", "chaos-b"])
    a = Mesh(folder / "a" / "data", token="chaos", extra=["--mesh-id", "chaos-a"])
    for mesh in (a, b):
        mesh.data_dir.parent.mkdir(parents=True)
    sink_proxy = TcpProxy(int(receiver.url.rsplit(":", 1)[1]))
    bridge_proxy = TcpProxy(b.port)
    try:
        (folder / "b.yaml").write_text(B_MANIFEST.replace("{out}", str(out_b)))
        (folder / "a.yaml").write_text(A_MANIFEST.replace("{out}", str(out_a)).replace(
            "{sink}", sink_proxy.url).replace("{bridge}", bridge_proxy.url))
        first_start(b, "-f", str(folder / "b.yaml"))
        bridge_proxy.target = ("127.0.0.1", b.port)  # its port may have changed
        first_start(a, "-f", str(folder / "a.yaml"))
        log(f"seed {seed}: {events} events over {duration:.0f}s into {a.url}; sink via :{sink_proxy.port}, "
            f"bridge via :{bridge_proxy.port} to {b.url}; logs in {folder}")
        driver = Driver(a.url, events, duration)
        chaos = Chaos(rng, a, sink_proxy, bridge_proxy, every)
        started = time.monotonic()
        chaos.start()
        asyncio.run(driver.run())
        sent_in = time.monotonic() - started
        chaos.stop()
        log(f"{len(driver.accepted)} accepted in {sent_in:.1f}s; chaos over: {dict(chaos.survived)}; settling")
        if not a.healthy():
            start(a)
        settled = time.monotonic()
        report = settle(a, driver.accepted, lambda: seen_at(receiver, out_a, out_b), settle_timeout)
        finished = time.monotonic()
        return {"bench": "chaos", "seed": seed, "events": events, "accepted": len(driver.accepted),
                "refused": len(driver.refused), "send_retries": driver.retries,
                "lost": sum(r["lost"] for r in report.values()),
                "duplicates": sum(r["duplicates"] for r in report.values()),
                "dead_lettered": sum(r["dead_lettered"] for r in report.values()),
                "kills_survived": {kind: chaos.survived[kind] for kind in (*KINDS, "mesh_kill_starting")},
                "mesh_restart_s": {"median": round(statistics.median(chaos.restarts), 1),
                                   "max": round(max(chaos.restarts), 1)} if chaos.restarts else None,
                "skipped": dict(chaos.skipped), "chaos_error": repr(chaos.error) if chaos.error else None,
                "destinations": report, "proxy": {name: {"connections": p.accepted, "refused": p.refused}
                                                  for name, p in (("sink", sink_proxy), ("bridge", bridge_proxy))},
                "send_s": round(sent_in, 1), "settle_s": round(finished - settled, 1),
                "duration_s": round(finished - started, 1)}
    finally:
        for mesh in (a, b):
            mesh.stop()
        sink_proxy.close()
        bridge_proxy.close()
        receiver.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds the events are spread over")
    parser.add_argument("--every", type=float, default=2.0, help="mean seconds between chaos actions")
    parser.add_argument("--settle", type=float, default=180.0, help="at most this long to wait for the end")
    parser.add_argument("--keep", type=Path, default=None, help="a folder to keep data and logs in")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = run(args.events, seed, args.duration, args.every, args.settle, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="fmesh-chaos-") as tmp:
            result = run(args.events, seed, args.duration, args.every, args.settle, Path(tmp))
    print(json.dumps(result, indent=2))
    log(f"seed {seed}: {result['accepted']} of {result['events']} events accepted, {result['lost']} lost, "
        f"{result['duplicates']} duplicates, {result['dead_lettered']} dead-lettered with a reason; survived "
        + ", ".join(f"{n} {kind}" for kind, n in result["kills_survived"].items()))
    sys.exit(1 if result["lost"] or result["chaos_error"] else 0)


if __name__ == "__main__":
    main()
