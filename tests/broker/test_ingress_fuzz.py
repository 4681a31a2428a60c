"""Fuzzing the ingress in-process (hypothesis; see tests/ingress_fuzz.py for the requests
and the oracle), and with atheris where it is installed. CI runs a bounded number of
cases per target; FMESH_FUZZ_EXAMPLES=N runs N of each."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from fmesh.broker.broker import Broker
from fmesh.broker.filters import compile_shorthand
from fmesh.broker.ingress import Ingress
from fmesh.broker.memory_log import MemoryEventLog
from hypothesis import given
from ingress_fuzz import (
    Request,
    any_request,
    batch_requests,
    binary_requests,
    check_answer,
    fuzz_settings,
    fuzz_timeout,
    mutated_requests,
    structured_requests,
)

HERE = Path(__file__).parent
pytestmark = pytest.mark.timeout(fuzz_timeout())


async def send(request: Request) -> tuple[int, dict, list]:
    """One request through a fresh ingress over raw ASGI; the status, answer and what was stored."""
    log = MemoryEventLog()
    broker = Broker(log)
    broker.subscribe("all", compile_shorthand({}))
    ingress = Ingress(broker.publish, max_event_bytes=256 * 1024)
    messages = [{"type": "http.request", "body": request.body, "more_body": False}]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def respond(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": request.headers, "client": ("127.0.0.1", 1)}
    await asyncio.wait_for(ingress(scope, receive, respond), 10)  # a hang fails here
    status = sent[0]["status"]
    answer = orjson.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    stored = [d.event for d in await log.claim("all", 1000)]
    return status, answer, stored


def run(request: Request) -> None:
    status, answer, stored = asyncio.run(send(request))
    check_answer(request, status, answer, stored)


@fuzz_settings(200)
@given(binary_requests())
def test_fuzz_binary_mode(request):
    run(request)


@fuzz_settings(200)
@given(structured_requests())
def test_fuzz_structured_mode(request):
    run(request)


@fuzz_settings(150)
@given(batch_requests())
def test_fuzz_batch_mode(request):
    run(request)


@fuzz_settings(200)
@given(mutated_requests())
def test_fuzz_by_mutating_valid_requests(request):
    run(request)


@fuzz_settings(100)
@given(any_request)
def test_fuzz_anything(request):
    run(request)


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is not installed here")
def test_atheris_finds_nothing_in_a_bounded_run(tmp_path):
    runs = os.environ.get("FMESH_FUZZ_EXAMPLES", "3000")
    result = subprocess.run([sys.executable, str(HERE / "ingress_atheris.py"), f"-runs={runs}", "-seed=1",
                             "-max_len=2048", "-len_control=0"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Done {runs} runs" in result.stderr, result.stderr[-2000:]
