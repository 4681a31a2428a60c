"""Slow and idle clients (issue 13, item 2): each attack gets its connections closed
within the configured bound, and a normal client keeps getting 202 during it."""

from __future__ import annotations

import selectors
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from support import Mesh, wait_for

SHORT = ["--header-timeout", "1s", "--body-timeout", "1s", "--min-body-rate", "1000", "--keepalive-timeout", "1s"]
EVENT = {"ce-specversion": "1.0", "ce-source": "/normal", "ce-type": "com.example.normal",
         "content-type": "application/json"}


def started(mesh: Mesh) -> Mesh:
    """`mesh` started, given more time than Mesh.start's 20s: a loaded CI machine takes that long."""
    mesh.start(wait=False)
    try:
        wait_for(mesh.healthy, 60, message=f"mesh on {mesh.url} to start")
    except AssertionError:
        mesh.stop()
        raise AssertionError(f"mesh on {mesh.url} did not start:\n{mesh.log()}") from None
    return mesh


@pytest.fixture(scope="module")
def short(tmp_path_factory) -> Mesh:
    """A mesh with every client timeout short."""
    mesh = started(Mesh(tmp_path_factory.mktemp("short") / "data", extra=SHORT))
    yield mesh
    mesh.stop()
    assert "Traceback" not in mesh.log(), mesh.log()  # a client cut off is not an error of the mesh's


@pytest.fixture(scope="module")
def capped(tmp_path_factory) -> Mesh:
    """A mesh with a cap of 50 connections and timeouts long enough that only the cap acts."""
    mesh = started(Mesh(tmp_path_factory.mktemp("capped") / "data",
                        extra=["--max-connections", "50", "--header-timeout", "60s", "--body-timeout", "60s"]))
    yield mesh
    mesh.stop()


class Attack:
    """Raw client sockets to the mesh, and what each got back before the mesh closed it."""

    def __init__(self, port: int, count: int, first: bytes = b"") -> None:
        self.sockets = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
        self.answers = {s: b"" for s in self.sockets}
        self.closed: set[socket.socket] = set()
        self.selector = selectors.DefaultSelector()
        for sock in self.sockets:
            if first:
                sock.sendall(first)
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ)

    def read(self) -> int:
        """Read what has come; the number of sockets the mesh has closed so far."""
        for key, _ in self.selector.select(timeout=0):
            sock = key.fileobj
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:  # reset: closed as well
                data = b""
            self.answers[sock] += data
            if not data:
                self.closed.add(sock)
                self.selector.unregister(sock)
        return len(self.closed)

    def all_closed(self) -> bool:
        return self.read() == len(self.sockets)

    def trickle(self, stop: threading.Event, every: float = 0.2) -> threading.Thread:
        """Send one header byte on every open socket each `every` seconds (slowloris)."""
        def run() -> None:
            while not stop.wait(every):
                for sock in self.sockets:
                    try:
                        sock.send(b"x")
                    except OSError:
                        pass

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.selector.close()
        for sock in self.sockets:
            sock.close()


def serve_normal_client(url: str, count: int = 10) -> None:
    """Post `count` events, each on a new connection; each must get 202 (within the client's
    timeout: how fast is bench/slow_clients.py's to measure, not a test's)."""
    for n in range(count):
        answer = httpx.post(url + "/", content=b'{"n": %d}' % n, timeout=5,
                            headers={**EVENT, "ce-id": f"normal-{n}-{time.monotonic_ns()}"})
        assert answer.status_code == 202, answer.text


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def stalled_body_request(declared: int, sent: bytes) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in {**EVENT, "ce-id": f"stalled-{time.monotonic_ns()}"}.items())
    return f"POST / HTTP/1.1\r\nhost: 127.0.0.1\r\n{head}content-length: {declared}\r\n\r\n".encode() + sent


def test_slowloris_connections_are_closed_within_the_header_timeout(short):
    mesh = short
    attack = Attack(mesh.port, 200, first=b"POST / HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ")
    stop = threading.Event()
    attack.trickle(stop)
    try:
        serve_normal_client(mesh.url)  # served while the trickle goes on
        wait_for(attack.all_closed, 6, message=f"the mesh to close 200 slowloris connections ({attack.read()} so far)")
        assert all(answer.startswith(b"HTTP/1.1 408") for answer in attack.answers.values())
    finally:
        stop.set()
        attack.close()


def test_idle_connections_that_send_nothing_are_closed_within_the_header_timeout(short):
    mesh = short
    attack = Attack(mesh.port, 100)
    try:
        serve_normal_client(mesh.url, 5)
        wait_for(attack.all_closed, 6, message=f"the mesh to close 100 idle connections ({attack.read()} so far)")
        assert not any(attack.answers.values())  # nothing asked, nothing answered: just closed
    finally:
        attack.close()


def test_a_body_that_stalls_after_ten_bytes_gets_408(short):
    mesh = short
    started = time.monotonic()
    attack = Attack(mesh.port, 1, first=stalled_body_request(1_000_000, b'{"n": 1234'))
    try:
        serve_normal_client(mesh.url, 5)
        wait_for(attack.all_closed, 6, message="the mesh to close the stalled body's connection")
        assert time.monotonic() - started >= 0.9  # the body had its timeout first
        answer = next(iter(attack.answers.values()))
        assert answer.startswith(b"HTTP/1.1 408") and b"body" in answer, answer
    finally:
        attack.close()


def test_many_stalled_large_bodies_get_408_while_normal_clients_are_served(short):
    mesh = short
    attack = Attack(mesh.port, 100, first=stalled_body_request(1_000_000, b"x" * (256 * 1024)))
    try:
        serve_normal_client(mesh.url)
        wait_for(attack.all_closed, 8, message=f"the mesh to close 100 stalled bodies ({attack.read()} so far)")
        assert all(answer.startswith(b"HTTP/1.1 408") for answer in attack.answers.values())
    finally:
        attack.close()


def test_a_trickled_body_below_the_minimum_rate_gets_408(short):
    mesh = short
    attack = Attack(mesh.port, 1, first=stalled_body_request(100_000, b"x"))
    stop = threading.Event()
    attack.trickle(stop, every=0.1)  # 10 bytes/s: never a pause of 1s, but far below 1000 bytes/s
    try:
        wait_for(attack.all_closed, 6, message="the mesh to close the trickled body's connection")
        assert next(iter(attack.answers.values())).startswith(b"HTTP/1.1 408")
    finally:
        stop.set()
        attack.close()


def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(short):
    mesh = short
    started = time.monotonic()
    attack = Attack(mesh.port, 1, first=stalled_body_request(2, b"{}"))
    try:
        wait_for(attack.all_closed, 5, message="the idle keep-alive connection to be closed")
        assert next(iter(attack.answers.values())).startswith(b"HTTP/1.1 202")
        assert time.monotonic() - started >= 0.9
    finally:
        attack.close()


def test_an_idle_connection_flood_stays_under_the_cap_and_normal_clients_get_in(capped):
    mesh, flood = capped, 200
    before = open_fds(mesh.process.pid)
    attack = Attack(mesh.port, flood)
    try:
        wait_for(lambda: attack.read() >= flood - 50, 5, message=f"the mesh to close all but 50 ({attack.read()})")
        assert open_fds(mesh.process.pid) <= before + 50 + 5
        serve_normal_client(mesh.url)  # each on a new connection, which takes the place of an idle one
        assert open_fds(mesh.process.pid) <= before + 50 + 5
    finally:
        attack.close()


def test_past_the_cap_with_no_connection_idle_a_new_one_gets_503(capped):
    mesh = capped
    request = stalled_body_request(1000, b"").replace(b"\r\n\r\n", b"\r\nexpect: 100-continue\r\n\r\n")
    busy = Attack(mesh.port, 50, first=request)  # bodies due: none of them idle
    try:  # 100 Continue: the app has each request and waits for its body
        wait_for(lambda: busy.read() == 0 and all(b" 100 " in a for a in busy.answers.values()), 10,
                 message="50 requests waiting for their bodies")
        late = Attack(mesh.port, 1)
        wait_for(late.all_closed, 5, message="the connection past the cap to be closed")
        assert next(iter(late.answers.values())).startswith(b"HTTP/1.1 503")
        assert busy.read() == 0
        late.close()
    finally:
        busy.close()
