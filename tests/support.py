"""Test helpers: real mesh processes on free loopback ports, and the CLI as users run it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
FMESH = [sys.executable, "-m", "fmesh.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float = 10.0, interval: float = 0.05, message: str = "condition"):
    """Poll `condition` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def json_lines(path: Path) -> list:
    """The JSON lines a handler has written to `path` so far ([] before the first): only whole
    ones, since a test that polls can read the file while a replica is writing a line."""
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]


def run_cli(args, env: dict[str, str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `fmesh ARGS` as a user would; with `check`, fail the test on a non-zero exit."""
    result = subprocess.run([*FMESH, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"fmesh {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


class Mesh:
    """A real `fmesh up` subprocess on a free port, with the CLI pointed at it."""

    def __init__(self, data_dir: Path, token: str = "test-token", extra: list[str] | None = None,
                 scheme: str = "http", client: dict | None = None, environ: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.environ = environ or {}  # more environment of the mesh process (secrets its manifest names)
        self.token = token
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.extra = extra or []
        self.client = client or {}  # httpx options for the mesh (verify=... for HTTPS and mTLS)
        self.process: subprocess.Popen | None = None
        self.output = data_dir.parent / f"mesh-{self.port}.out"

    def env(self, **more: str) -> dict[str, str]:
        return {**os.environ, "FMESH_TOKEN": self.token, "FMESH_URL": self.url,
                "FMESH_DATA_DIR": str(self.data_dir), **self.environ, **more}

    def start(self, *args: str, wait: bool = True) -> Mesh:
        command = [*FMESH, "up", "--port", str(self.port), "--data-dir", str(self.data_dir), *self.extra, *args]
        with self.output.open("ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=self.env())
        if wait:
            wait_for(self.healthy, 60, message=f"mesh on {self.url} to start:\n{self.log()}")
        return self

    def healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"mesh exited with {self.process.returncode}:\n{self.log()}")
        try:
            return httpx.get(self.url + "/healthz", timeout=1, **self.client).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self._remove_run_dir()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._remove_run_dir()

    def _remove_run_dir(self) -> None:
        """The node's socket folder in /tmp (fmesh-PID-*), which a killed node leaves behind."""
        if self.process is not None and self.process.poll() is not None:
            for left in Path(tempfile.gettempdir()).glob(f"fmesh-{self.process.pid}-*"):
                shutil.rmtree(left, ignore_errors=True)

    def cli(self, *args: str, check: bool = True, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        return run_cli(args, self.env(**env), check, timeout)

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **{**self.client, **kwargs})

    def status(self, name: str) -> dict:
        report = self.api("GET", "/v1/status").json()
        return next((f for f in report["functions"] if f["name"] == name), {})


def append_manifest(folder: Path, out: Path, event_type: str, scale: str = "{max: 2, concurrency: 4}") -> Path:
    """A manifest with one function, `append`, writing the id of each `event_type` event to `out`."""
    return write_manifest(folder, f"""
functions:
  append:
    handler: {{fixtures}}/append/handler.py:handle
    on: [{{{{type: {event_type}}}}}]
    env: {{{{APPEND_TO: "{out}"}}}}
    scale: {scale.replace("{", "{{").replace("}", "}}")}
""")


def write_manifest(folder: Path, text: str) -> Path:
    """A manifest in `folder`; handler paths in `text` may use {fixtures} and {functions}."""
    path = folder / "fmesh.yaml"
    path.write_text(text.format(fixtures=FIXTURES / "functions", functions=ROOT / "functions"))
    return path


class Receiver:
    """A real HTTP server on a free loopback port that records what it is sent and answers
    as scripted per path: a list of (status, headers, body, delay) used in turn, the last
    one repeating."""

    def __init__(self, tls=None) -> None:
        """`tls`: an `ssl.SSLContext` (server side) to serve HTTPS with."""
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[dict] = []
        self.scripts: dict[str, list[tuple[int, dict, bytes, float]]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                status, headers, reply, delay = receiver._record(self.path, dict(self.headers.items()), body)
                time.sleep(delay)
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the mesh gave up waiting: that is what a timeout test wants

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def script(self, path: str, *answers: tuple) -> None:
        """Answers for `path`: (status,), (status, headers), (status, headers, body) or with a delay."""
        full = [(a + (None, None, None))[:4] for a in answers]
        self.scripts[path] = [(s, h or {}, b or b"", d or 0.0) for s, h, b, d in full]

    def _record(self, path: str, headers: dict, body: bytes) -> tuple[int, dict, bytes, float]:
        with self.lock:
            self.requests.append({"path": path, "headers": {k.lower(): v for k, v in headers.items()},
                                  "body": body, "at": time.time()})
            answers = self.scripts.get(path, [(202, {}, b"", 0.0)])
            return answers.pop(0) if len(answers) > 1 else answers[0]

    def to(self, path: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def tar_gz(members: dict[str, bytes]) -> bytes:
    """A tar.gz of regular files, as a hostile or hand-made upload would be."""
    import gzip
    import io
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=9)
