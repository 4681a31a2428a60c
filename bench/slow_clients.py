"""A normal client's latency while slow and idle clients attack the mesh (issue 13, item 2).

One mesh with its default client limits (`fmesh up` as shipped). A normal client posts
single binary-mode events one after another, on one keep-alive connection and then on
a new connection each, first with no attack, then during each attack:

- slowloris: 200 connections that send one header byte a second and never finish;
- stalled bodies: 200 requests declaring 1 MiB that send 1 MB of it and stall;
- idle flood: 20,000 connections that send nothing (from as many attacker processes as their
  fd limit needs).

An attacker keeps its count up: a connection the mesh closes is opened again at once.
The attacker is its own process (`python bench/slow_clients.py attack ...`) so that it
and the normal client do not share a GIL. Printed per scenario: the normal client's p50
and p99 (ms), the ratio of its p99 to the no-attack p99, its errors, the mesh's RSS (max
of samples during the attack) and open fds, and how the attacker's connections ended.

    python bench/slow_clients.py [--seconds 12] [--settle 3] [--idle 20000]
"""

from __future__ import annotations

import argparse
import json
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.common import PYTHON, emit, free_port, mesh, wait_http  # noqa: E402

MIB = 1024 * 1024
DECLARED = MIB - 4096  # about 1 MiB: the most an event may be once its ce-* headers are counted
EVENT = {"ce-specversion": "1.0", "ce-source": "/bench/normal", "ce-type": "bench.normal",
         "content-type": "application/octet-stream"}


def raise_fd_limit() -> int:
    """The soft fd limit raised to the hard one (children inherit it); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# -- the attacker (its own process) --------------------------------------------------------

def opening(kind: str, port: int, n: int) -> bytes:
    if kind == "slowloris":
        return f"POST / HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nx-slow: ".encode()
    if kind == "stalled":
        head = "".join(f"{k}: {v}\r\n" for k, v in EVENT.items())
        return (f"POST / HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n{head}ce-id: stalled-{n}\r\n"
                f"content-length: {DECLARED}\r\n\r\n").encode() + b"x" * 1_000_000
    return b""  # idle


class Attacker:
    def __init__(self, kind: str, port: int, count: int, stop: threading.Event) -> None:
        self.kind, self.port, self.count, self.stop = kind, port, count, stop
        self.selector = selectors.DefaultSelector()
        self.answers: dict[socket.socket, bytes] = {}
        self.stats = {"opened": 0, "closed_by_mesh": 0, "refused_to_connect": 0, "answers": {}}

    def open(self) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            first = opening(self.kind, self.port, self.stats["opened"])
            if first:
                sock.sendall(first)
        except OSError:
            self.stats["refused_to_connect"] += 1
            return
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ)
        self.answers[sock] = b""
        self.stats["opened"] += 1

    def read(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.answers[sock] += data
            return
        answer = self.answers.pop(sock)
        code = answer[9:12].decode() if answer.startswith(b"HTTP/1.1 ") else "none"
        self.stats["answers"][code] = self.stats["answers"].get(code, 0) + 1
        self.stats["closed_by_mesh"] += 1
        self.selector.unregister(sock)
        sock.close()
        if not self.stop.is_set():
            self.open()  # keep the count up, as an attacker would

    def run(self) -> None:
        for _ in range(self.count):
            self.open()
        print("ready", flush=True)
        next_byte = time.monotonic() + 1
        while not self.stop.is_set():
            for key, _ in self.selector.select(timeout=0.1):
                if self.stop.is_set():
                    break
                self.read(key.fileobj)  # type: ignore[arg-type]
            if self.kind == "slowloris" and time.monotonic() >= next_byte:
                next_byte += 1
                for sock in list(self.answers):
                    try:
                        sock.send(b"x")
                    except OSError:
                        pass
        self.stats["open_at_end"] = len(self.answers)
        print(json.dumps(self.stats), flush=True)


def attack_main(kind: str, port: int, count: int) -> None:
    raise_fd_limit()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    Attacker(kind, port, count, stop).run()


# -- the normal client and the scenarios ---------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def normal_client(url: str, seconds: float, new_connections: bool) -> tuple[list[float], int]:
    """Latencies (s) of the events posted one after another for `seconds`, and how many
    failed (it gives up after 10 failures: a mesh that does not answer would take forever)."""
    latencies, errors = [], 0
    fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection per request, no new client
    client = httpx.Client(timeout=5, limits=fresh if new_connections else httpx.Limits())
    until, n = time.monotonic() + seconds, 0
    while time.monotonic() < until and errors < 10:
        n += 1
        headers = {**EVENT, "ce-id": f"normal-{time.monotonic_ns()}-{n}"}
        started = time.perf_counter()
        try:
            answer = client.post(url + "/", content=b"x" * 256, headers=headers)
            errors += answer.status_code != 202
        except httpx.HTTPError:
            errors += 1
        latencies.append(time.perf_counter() - started)
    client.close()
    return latencies, errors


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


class Sampler:
    """The mesh's RSS and open fds, sampled every 0.2 s while a scenario runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.rss, self.fds = pid, [vm_rss_mb(pid)], [open_fds(pid)]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.rss.append(vm_rss_mb(self.pid))
            self.fds.append(open_fds(self.pid))

    def done(self) -> dict:
        self.stop.set()
        self.thread.join()
        return {"mesh_rss_mb_max": round(max(self.rss), 1), "mesh_open_fds_max": max(self.fds)}


def scenario(url: str, pid: int, seconds: float, settle: float, attacks: list[list[str]]) -> dict:
    """The normal client's latencies while `attacks` (attacker processes' arguments) run."""
    attackers = [subprocess.Popen([PYTHON, __file__, "attack", *attack], stdout=subprocess.PIPE, text=True)
                 for attack in attacks]
    for attacker in attackers:
        assert attacker.stdout is not None and attacker.stdout.readline().strip() == "ready"
    if attackers:
        time.sleep(settle)  # a bench, not a test: let the attack reach its steady state
    sampler = Sampler(pid)
    kept, kept_errors = normal_client(url, seconds, new_connections=False)
    fresh, fresh_errors = normal_client(url, seconds / 2, new_connections=True)
    result = {**sampler.done(), "keepalive": summary(kept, kept_errors), "new_connection": summary(fresh, fresh_errors)}
    for attacker in attackers:
        attacker.send_signal(signal.SIGTERM)
    if attackers:
        result["attacker"] = merged([json.loads(a.communicate(timeout=60)[0].strip().splitlines()[-1])
                                     for a in attackers])
    return result


def merged(stats: list[dict]) -> dict:
    total: dict = {"processes": len(stats), "answers": {}}
    for one in stats:
        for key, value in one.items():
            if key == "answers":
                for code, count in value.items():
                    total["answers"][code] = total["answers"].get(code, 0) + count
            else:
                total[key] = total.get(key, 0) + value
    return total


def summary(latencies: list[float], errors: int) -> dict:
    return {"requests": len(latencies), "errors": errors, "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=12.0,
                        help="how long the normal client posts on one connection (then half as long on new ones); "
                             "past the default header and body timeouts of 10s, so that the mesh's closes count")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds an attack runs before measuring")
    parser.add_argument("--idle", type=int, default=20_000, help="idle connections (capped by the fd limit)")
    args = parser.parse_args()
    fd_limit = raise_fd_limit()
    per_process = fd_limit - 100  # an attacker process can hold about its fd limit: more take more of them
    idle = [[str(min(per_process, args.idle - n))] for n in range(0, args.idle, per_process)]
    port = free_port()
    with tempfile.TemporaryDirectory() as data, mesh(port, Path(data), log=Path(data) / "mesh.log") as node:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/healthz")
        attacks = {"none": [], "slowloris_200": [["slowloris", str(port), "200"]],
                   "stalled_1mb_bodies_200": [["stalled", str(port), "200"]],
                   f"idle_connections_{args.idle}": [["idle", str(port), *count] for count in idle]}
        results = {name: scenario(url, node.pid, args.seconds, args.settle, attack)
                   for name, attack in attacks.items()}
    base = {mode: results["none"][mode]["p99_ms"] for mode in ("keepalive", "new_connection")}
    for result in results.values():
        for mode in base:
            result[mode]["p99_vs_no_attack"] = round(result[mode]["p99_ms"] / base[mode], 2)
    emit({"fd_limit": fd_limit, "scenarios": results})


if __name__ == "__main__":
    if sys.argv[1:2] == ["attack"]:
        attack_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
