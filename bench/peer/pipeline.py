"""Starts the peer pipeline (nats-server with JetStream, the FastStream subscriber, the
FastAPI endpoint), each in its own process group, from the peer's own venv
(bench/.peer-venv, which bench/run fills), and stops them again.

    with PeerPipeline(tmp_dir, handler="bench/functions/noop/handler.py:handle") as peer:
        peer.url          # POST binary-mode CloudEvents here
        peer.handled()    # events handled and acked so far
        peer.backlog()    # events JetStream holds for the subscriber, not acked yet
"""

from __future__ import annotations

import mmap
import socket
import struct
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from bench.common import UVICORN_FLAGS, Process, free_port

HERE = Path(__file__).resolve().parent
VENV = HERE.parent / ".peer-venv"
PYTHON = str(VENV / "bin" / "python")
NATS_SERVER = str(VENV / "bin" / "nats-server")
SUBJECT = "bench.events"


def check_venv() -> None:
    if not Path(PYTHON).exists() or not Path(NATS_SERVER).exists():
        raise RuntimeError(f"the peer's venv {VENV} is missing or incomplete: run bench/run, which installs it")


class PeerPipeline:
    """The three peer processes for the length of a `with` block; logs in `folder`."""

    def __init__(self, folder: Path, handler: str) -> None:
        check_venv()
        self.folder = folder
        path, _, function = handler.rpartition(":")
        self.handler = f"{Path(path).resolve()}:{function}"  # the subscriber runs elsewhere
        self.latency_file = folder / "latency.f64"  # the handler's samples (bench/latency.py)
        self.stats_file = folder / "peer-acked"
        self.nats_port, self.http_port, self.monitor_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}/"
        self._stack = ExitStack()
        self._counter: mmap.mmap | None = None
        self.pids: dict[str, int] = {}

    def __enter__(self) -> PeerPipeline:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._counter is not None:
            self._counter.close()
        self._stack.close()  # reverse order: endpoint, subscriber, then nats-server

    def _start(self) -> None:
        nats_url = f"nats://127.0.0.1:{self.nats_port}"
        env = {"PEER_NATS_URL": nats_url, "PEER_SUBJECT": SUBJECT, "PEER_STREAM": "BENCH",
               "PEER_STATS_FILE": str(self.stats_file), "PEER_HANDLER": self.handler,
               "BENCH_LATENCY_FILE": str(self.latency_file)}
        nats = self._run("nats", [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.nats_port),
                                  "-m", str(self.monitor_port), "-js",
                                  "-sd", str(self.folder / "jetstream")], env)
        wait_tcp(self.nats_port, nats)
        subscriber = self._run("subscriber", [PYTHON, str(HERE / "subscriber.py")], env)
        self._counter = wait_counter(self.stats_file, subscriber)  # it created the stream: publish may start
        endpoint = self._run("endpoint", [PYTHON, "-m", "uvicorn", "endpoint:app", "--app-dir", str(HERE),
                                          "--host", "127.0.0.1", "--port", str(self.http_port),
                                          *UVICORN_FLAGS], env)
        wait_tcp(self.http_port, endpoint)  # uvicorn listens once its lifespan (NATS connect) is done

    def _run(self, name: str, command: list[str], env: dict[str, str]) -> Process:
        process = self._stack.enter_context(Process(command, env, log=self.folder / f"{name}.log"))
        self.pids[name] = process.pid
        return process

    def processes(self) -> list[int]:
        """nats-server, the subscriber and the endpoint: what CPU per event is charged to."""
        return list(self.pids.values())

    def handled(self) -> int:
        """Events the subscriber handled and acked, as it counts them."""
        return struct.unpack_from("q", self._counter, 0)[0]  # type: ignore[arg-type]

    def backlog(self) -> int:
        """Messages of the stream not yet acked by the subscriber (not delivered to it yet, or
        delivered and not acked), from nats-server's own monitoring endpoint."""
        url = f"http://127.0.0.1:{self.monitor_port}/jsz?accounts=true&streams=true&consumers=true"
        info = httpx.get(url, timeout=30).json()
        return sum(consumer.get("num_pending", 0) + consumer.get("num_ack_pending", 0)
                   for account in info.get("account_details", [])
                   for stream in account.get("stream_detail", [])
                   for consumer in stream.get("consumer_detail", []))


def wait_tcp(port: int, process: Process, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check_alive(process)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def wait_counter(path: Path, process: Process, timeout: float = 30) -> mmap.mmap:
    deadline = time.monotonic() + timeout
    while not path.exists():
        check_alive(process)
        if time.monotonic() > deadline:
            raise RuntimeError(f"the peer's subscriber was not ready after {timeout}s (see {process.log})")
        time.sleep(0.05)
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 8, access=mmap.ACCESS_READ)


def check_alive(process: Process) -> None:
    if process.proc is not None and process.proc.poll() is not None:
        log = Path(process.log).read_text(errors="replace")[-2000:] if process.log else ""
        raise RuntimeError(f"{' '.join(process.command[:3])} exited with {process.proc.returncode}:\n{log}")

