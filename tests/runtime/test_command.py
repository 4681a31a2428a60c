"""Functions in any language: a program serving the CloudEvents HTTP binding on $PORT."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys

import pytest
from fmesh.runtime.logs import LogStore
from fmesh.runtime.policy import ScalePolicy
from fmesh.runtime.pool import RunnerPool
from fmesh.runtime.starters import CommandStarter
from support import FIXTURES, ROOT

from fmesh.errors import HandlerError
from fmesh.events import new_event


@pytest.fixture
def logs(tmp_path):
    store = LogStore(tmp_path / "logs")
    yield store
    store.close()


def command_pool(name, command, workdir, logs, scale=ScalePolicy(max=2), env=None, structured=False):
    environment = {"PATH": os.environ["PATH"], "FMESH_VERSION": "test", **(env or {})}
    starter = CommandStarter(name, command, workdir, lambda: environment, logs, structured)
    pool = RunnerPool(name, starter, scale, lambda text: logs.note(name, text))
    pool.start()
    return pool


async def test_a_plain_http_program_is_a_function(logs):
    pool = command_pool("echo", [sys.executable, "server.py"], FIXTURES / "functions/http_echo", logs,
                        env={"HEALTH_DELAY": "0.3"})
    try:
        reply = await pool.invoke(new_event("t", "/s", {"n": 1}), timeout=10)
        assert reply["type"] == "echo.reply" and reply.data == {"got": '{"n":1}', "mode": "binary"}
        with pytest.raises(HandlerError) as failure:
            await pool.invoke(new_event("fail.me", "/s"), timeout=10)
        assert failure.value.status == 500 and failure.value.retryable and "asked to fail" in str(failure.value)
        assert "http_echo got" in "".join(logs.tail("echo"))
    finally:
        await pool.shutdown(grace=2)


async def test_a_program_gets_the_trace_context_in_the_binding_and_as_the_hop_header(logs):
    pool = command_pool("echo", [sys.executable, "server.py"], FIXTURES / "functions/http_echo", logs)
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    try:
        reply = await pool.invoke(new_event("t", "/s", {"n": 1}, traceparent=traceparent), timeout=10)
        assert reply.data["ce_traceparent"] == traceparent
        hop = reply.data["traceparent"]  # a child: the same trace, a parent id of its own
        assert hop.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-") and hop != traceparent
    finally:
        await pool.shutdown(grace=2)


async def test_structured_mode_on_request(logs):
    pool = command_pool("echo", [sys.executable, "server.py"], FIXTURES / "functions/http_echo", logs,
                        structured=True)
    try:
        reply = await pool.invoke(new_event("t", "/s", {"n": 1}), timeout=10)
        assert reply.data["mode"] == "structured"
    finally:
        await pool.shutdown(grace=2)


async def test_a_program_that_dies_is_replaced(logs):
    pool = command_pool("echo", [sys.executable, "server.py"], FIXTURES / "functions/http_echo", logs)
    try:
        await pool.invoke(new_event("t", "/s"), timeout=10)
        [replica] = pool.replicas.values()
        os.kill(replica.pid, 9)
        for _ in range(100):
            if not pool.replicas:
                break
            await asyncio.sleep(0.02)
        reply = await pool.invoke(new_event("t", "/s"), timeout=10)
        assert reply["type"] == "echo.reply"
        assert "killed by SIGKILL" in "".join(logs.tail("echo"))
    finally:
        await pool.shutdown(grace=2)


async def test_a_command_that_cannot_start_says_why(logs, tmp_path):
    pool = command_pool("nope", ["definitely-not-a-program"], tmp_path, logs)
    with pytest.raises(HandlerError, match="cannot run 'definitely-not-a-program'"):
        await pool.invoke(new_event("t", "/s"), timeout=5)
    await pool.shutdown()


@pytest.fixture(scope="module")
def node_function(tmp_path_factory):
    """functions/node-hello with its npm dependency installed, as a user would."""
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("Node.js and npm are needed for the Node.js function test")
    folder = tmp_path_factory.mktemp("node") / "node-hello"
    shutil.copytree(ROOT / "functions/node-hello", folder)
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=folder, check=True,
                   capture_output=True, timeout=300)
    return folder


async def test_the_node_js_function(node_function, logs):
    pool = command_pool("node-hello", ["node", "server.js"], node_function, logs)
    try:
        reply = await pool.invoke(new_event("com.example.hello", "/s", {"name": "Node"}), timeout=20)
        assert reply["type"] == "com.example.hello.reply" and reply["source"] == "/functions/node-hello"
        assert reply.data == {"greeting": "Hello, Node!", "from": "node", "version": "test"}
        assert "node-hello got com.example.hello" in "".join(logs.tail("node-hello"))
    finally:
        await pool.shutdown(grace=5)
