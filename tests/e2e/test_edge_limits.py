"""The limits of issue 13 on a real mesh behind its real HTTP server: header sections,
extension counts, headers counted in the event size, and `time` carried exactly to a sink."""

from __future__ import annotations

import socket

import httpx
from support import wait_for, write_manifest

BINARY = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/edge", "ce-type": "edge"}


def post(mesh, headers, body=b"", path="/"):
    return httpx.post(mesh.url + path, headers=headers, content=body, timeout=30)


def test_a_huge_header_is_431_before_it_is_stored(mesh):
    answer = post(mesh, {**BINARY, "ce-subject": "s" * (1024 * 1024)})
    assert answer.status_code == 431 and "request headers are" in answer.json()["error"]
    assert post(mesh, BINARY).status_code == 202  # and the mesh goes on serving


def test_too_many_headers_is_431_on_every_path(mesh):
    many = {f"x-h{i}": "v" for i in range(150)}
    for path in ("/", "/v1/status", "/healthz"):
        answer = post(mesh, {**BINARY, **many}, path=path)
        assert answer.status_code == 431, (path, answer.text)
        assert "more than the limit of 100" in answer.json()["error"]


def test_a_header_flood_does_not_reach_the_store(mesh_factory, tmp_path, receiver):
    mesh = mesh_factory(extra=["--max-header-bytes", "8192", "--max-extensions", "4"]).start()
    write_manifest(tmp_path, f"""
subscriptions:
  audit:
    filter: {{{{type: edge}}}}
    to: {receiver.url}/audit
""")
    mesh.cli("deploy", "-f", str(tmp_path / "fmesh.yaml"))
    assert post(mesh, {**BINARY, "ce-subject": "s" * 9000}).status_code == 431
    five = {f"ce-x{i}": "v" for i in range(5)}
    answer = post(mesh, {**BINARY, "ce-id": "five", **five})
    assert answer.status_code == 413 and "5 extension attributes" in answer.json()["error"]
    assert post(mesh, {**BINARY, "ce-id": "ok", "ce-time": "2016-12-31T23:59:60.123456789Z"}).status_code == 202
    wait_for(lambda: receiver.to("/audit"), 15, message="the accepted event at the sink")
    [delivered] = receiver.to("/audit")
    assert delivered["headers"]["ce-id"] == "ok"
    assert delivered["headers"]["ce-time"] == "2016-12-31T23:59:60.123456789Z"  # not re-serialized


def test_a_raw_request_with_a_64_mib_header_gets_an_answer_not_a_hang(mesh):
    """As the probe sent it: one header far past every limit, on a raw socket."""
    host, port = "127.0.0.1", mesh.port
    with socket.create_connection((host, port), timeout=30) as conn:
        head = (b"POST / HTTP/1.1\r\nHost: x\r\nce-specversion: 1.0\r\nce-id: big\r\nce-source: /s\r\n"
                b"ce-type: t\r\nContent-Length: 0\r\nce-subject: ")
        conn.sendall(head)
        try:
            chunk = b"s" * (1024 * 1024)
            for _ in range(64):
                conn.sendall(chunk)
            conn.sendall(b"\r\n\r\n")
            reply = conn.recv(4096)
        except (BrokenPipeError, ConnectionResetError):
            reply = b"closed"  # refused while sending: as good as an answer
    assert reply.startswith(b"HTTP/1.1 431") or reply in (b"", b"closed"), reply[:200]
    assert post(mesh, BINARY).status_code == 202


UPGRADE = (b"Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")


def raw_answer(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
        conn.sendall(request)
        return conn.recv(65536)


def test_a_websocket_upgrade_is_plain_http_that_meets_the_same_limits(mesh):
    """The mesh serves no WebSocket: an upgrade skipped the header limits and hung before."""
    many = b"".join(b"x-h%d: v\r\n" % i for i in range(150))
    assert raw_answer(mesh.port, b"GET /v1/functions HTTP/1.1\r\n" + UPGRADE + many + b"\r\n").startswith(
        b"HTTP/1.1 431")
    for path in (b"/", b"/v1/functions", b"/healthz"):
        reply = raw_answer(mesh.port, b"GET " + path + b" HTTP/1.1\r\n" + UPGRADE + b"\r\n")
        assert not reply.startswith((b"HTTP/1.1 101", b"HTTP/1.1 5")), reply[:100]
    assert "ERROR" not in mesh.log() and "Unsupported upgrade" not in mesh.log(), mesh.log()[-2000:]
