"""Shared bench plumbing: processes on free ports, wrk runs, medians. Benchmarks are not tests."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
UVICORN_FLAGS = ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up in {timeout}s")


class Process:
    """A server process for the length of a `with` block."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.command = command
        self.env = {**os.environ, **(env or {})}
        self.log = log  # where its stdout and stderr go (default: nowhere), to diagnose a failed run
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Process:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        err = subprocess.STDOUT if self.log else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(self.command, env=self.env, stdout=out, stderr=err,
                                         start_new_session=True)
        finally:
            if self.log:
                out.close()  # the child has its own copy
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    @property
    def pid(self) -> int:
        return self.proc.pid  # type: ignore[union-attr]


def bare_app(port: int) -> Process:
    return Process([PYTHON, "-m", "uvicorn", "bench.bare_app:app", "--host", "127.0.0.1", "--port", str(port),
                    *UVICORN_FLAGS], env={"PYTHONPATH": str(ROOT)})


def mesh(port: int, data_dir: Path, *args: str, log: Path | None = None) -> Process:
    return Process([PYTHON, "-m", "fmesh.cli", "up", "--port", str(port), "--data-dir", str(data_dir), *args],
                   env={"FMESH_TOKEN": "bench"}, log=log)


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = string.rep("x", {size})
wrk.headers["ce-specversion"] = "1.0"
wrk.headers["ce-type"] = "{type}"
wrk.headers["ce-source"] = "/bench"
wrk.headers["content-type"] = "application/octet-stream"
local counter = 0
request = function()
  counter = counter + 1
  wrk.headers["ce-id"] = "bench-" .. counter
  return wrk.format(nil, "/")
end
"""


def wrk(url: str, seconds: int, connections: int, event_type: str = "bench.event", size: int = 1024,
        rate: int | None = None) -> dict:
    """Requests/s (all answers, and `ok_rps`: 2xx only) and the non-2xx count from wrk sending
    binary-mode CloudEvents of `size` bytes."""
    if not shutil.which("wrk"):
        raise RuntimeError("wrk is not installed: apt-get install -y wrk")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT.replace("{size}", str(size)).replace("{type}", event_type))
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script.name, url]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60).stdout
    os.unlink(script.name)
    return parse_wrk(out)


def parse_wrk(out: str) -> dict:
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    refused = int(non_2xx.group(1)) if non_2xx else 0
    # ok_rps: only 2xx answers are throughput (a 429 or 503 is a refusal, however fast)
    return {"rps": rate, "ok_rps": rate * (requests - refused) / requests if requests else 0.0,
            "requests": requests, "non_2xx": refused, "socket_errors": errors.group(0) if errors else None}


def median(values: list[float]) -> float:
    return statistics.median(values)


# This machine's speed swings by a quarter within seconds. Comparing two sides, each run
# measures both (in alternating order, ABBA, so a steady drift favours neither) and the
# figure is the median of the runs' own ratios, never a ratio of two sides' medians, which
# sets one run's slow seconds against another run's fast ones.

def in_turn(run: int, sides: tuple) -> tuple:
    """`sides` in the order run number `run` measures them: ABBA."""
    return sides if run % 2 == 0 else sides[::-1]


def pair_ratios(numerators: list[float], denominators: list[float]) -> list[float]:
    """Each run's ratio of the two sides."""
    return [round(top / bottom, 3) for top, bottom in zip(numerators, denominators, strict=True)]


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    return round(statistics.median(pair_ratios(numerators, denominators)), 3)


def emit(result: dict) -> None:
    print(json.dumps(result, indent=2))
