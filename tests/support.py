"""Test helpers: real mesh processes on free loopback ports, and the CLI as users run it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
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


def run_cli(args, env: dict[str, str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `fmesh ARGS` as a user would; with `check`, fail the test on a non-zero exit."""
    result = subprocess.run([*FMESH, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"fmesh {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


class Mesh:
    """A real `fmesh up` subprocess on a free port, with the CLI pointed at it."""

    def __init__(self, data_dir: Path, token: str = "test-token", extra: list[str] | None = None) -> None:
        self.data_dir = data_dir
        self.token = token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra = extra or []
        self.process: subprocess.Popen | None = None
        self.output = data_dir.parent / f"mesh-{self.port}.out"

    def env(self, **more: str) -> dict[str, str]:
        return {**os.environ, "FMESH_TOKEN": self.token, "FMESH_URL": self.url,
                "FMESH_DATA_DIR": str(self.data_dir), **more}

    def start(self, *args: str, wait: bool = True) -> Mesh:
        command = [*FMESH, "up", "--port", str(self.port), "--data-dir", str(self.data_dir), *self.extra, *args]
        with self.output.open("ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=self.env())
        if wait:
            wait_for(self.healthy, 20, message=f"mesh on {self.url} to start:\n{self.log()}")
        return self

    def healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"mesh exited with {self.process.returncode}:\n{self.log()}")
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def cli(self, *args: str, check: bool = True, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        return run_cli(args, self.env(**env), check, timeout)

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def status(self, name: str) -> dict:
        report = self.api("GET", "/v1/status").json()
        return next((f for f in report["functions"] if f["name"] == name), {})


def write_manifest(folder: Path, text: str) -> Path:
    """A manifest in `folder`; handler paths in `text` may use {fixtures} and {functions}."""
    path = folder / "fmesh.yaml"
    path.write_text(text.format(fixtures=FIXTURES / "functions", functions=ROOT / "functions"))
    return path
