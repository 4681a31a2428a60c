"""What answers without a token: /healthz always; /metrics and the API docs per --public-metrics."""

from __future__ import annotations

import socket

import httpx
import pytest

PRIVATE_UNLESS_PUBLIC = ("/metrics", "/openapi.json", "/docs", "/redoc")


def token(mesh, name: str, scope: str) -> str:
    made = mesh.api("POST", "/v1/tokens", json={"name": name, "scope": scope})
    assert made.status_code == 201, made.text
    return made.json()["token"]


def get(mesh, path: str, bearer: str | None = None) -> int:
    headers = {"authorization": f"Bearer {bearer}"} if bearer else {}
    return httpx.get(mesh.url + path, headers=headers, timeout=10).status_code


def assert_private(mesh) -> None:
    reader, publisher = token(mesh, "reader", "read"), token(mesh, "publisher", "publish")
    for path in PRIVATE_UNLESS_PUBLIC:
        assert get(mesh, path) == 401, path
        assert get(mesh, path, "wrong") == 401, path
        assert get(mesh, path, publisher) == 403, path  # a publish token is for POST / only
        assert get(mesh, path, reader) == 200, path
        assert get(mesh, path, mesh.token) == 200, path
    metrics = httpx.get(mesh.url + "/metrics", headers={"authorization": f"Bearer {reader}"}, timeout=10)
    assert "fmesh_function_replicas" in metrics.text
    assert get(mesh, "/healthz") == 200  # bridges ask it, before they hold any token of ours
    assert get(mesh, "/v1/status") == 401


def test_no_public_metrics_puts_metrics_and_docs_behind_a_read_token(mesh_factory):
    mesh = mesh_factory(extra=["--no-public-metrics"]).start()
    assert_private(mesh)
    line = next(line for line in mesh.log().splitlines() if "/metrics" in line)
    assert "need a read or admin token (--public-metrics to change)" in line, mesh.log()


def test_metrics_and_docs_are_public_by_default_on_loopback(mesh_factory):
    mesh = mesh_factory().start()
    for path in PRIVATE_UNLESS_PUBLIC:
        assert get(mesh, path) == 200, path
    assert httpx.get(mesh.url + "/openapi.json", timeout=10).json()["info"]["title"] == "fmesh control API"
    assert get(mesh, "/v1/status") == 401
    line = next(line for line in mesh.log().splitlines() if "/metrics" in line)
    assert "public, the default on 127.0.0.1 (--no-public-metrics to change)" in line, mesh.log()


def loopback_host_name() -> str:
    """This machine's name if it resolves to loopback addresses only (a name, not an address,
    so the mesh takes it for a bind other machines may reach); else skip."""
    name = socket.gethostname()
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)}
    except socket.gaierror:
        pytest.skip(f"the host name {name!r} does not resolve")
    if not addresses or not all(a.startswith("127.") or a == "::1" for a in addresses):
        pytest.skip(f"the host name {name!r} resolves to {sorted(addresses)}, not to loopback only")
    return name


def test_metrics_and_docs_are_private_by_default_on_other_binds(mesh_factory):
    host = loopback_host_name()
    mesh = mesh_factory(extra=["--host", host]).start()
    assert_private(mesh)
    line = next(line for line in mesh.log().splitlines() if "/metrics" in line)
    assert f"need a read or admin token, the default on {host} (--public-metrics to change)" in line, mesh.log()
