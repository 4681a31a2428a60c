"""The control API client against an in-process transport: what `fmesh logs -f` hears."""

from __future__ import annotations

import httpx
import pytest
from fmesh.deploy.client import MeshClient

from fmesh.errors import BrokerUnreachable, DeployError

URL = "http://127.0.0.1:1"


def client_answering(handler) -> MeshClient:
    return MeshClient(URL, "t", transport=httpx.MockTransport(handler))


def test_a_log_stream_that_ends_means_the_mesh_went_away():
    mesh = client_answering(lambda request: httpx.Response(200, text="one\ntwo\n"))
    lines = []
    with pytest.raises(BrokerUnreachable, match=f"^cannot reach {URL}: the mesh ended the log stream"):
        for line in mesh.follow_logs("f", 10):
            lines.append(line)
    assert lines == ["one", "two"]


def test_a_log_stream_that_breaks_means_the_mesh_went_away():
    class Broken(httpx.SyncByteStream):
        def __iter__(self):
            yield b"one\n"
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    mesh = client_answering(lambda request: httpx.Response(200, stream=Broken()))
    with pytest.raises(BrokerUnreachable, match="connection broke while following logs .RemoteProtocolError."):
        list(mesh.follow_logs("f", 10))


def test_stopping_to_follow_is_no_error():
    mesh = client_answering(lambda request: httpx.Response(200, text="one\ntwo\n"))
    stream = mesh.follow_logs("f", 10)
    assert next(stream) == "one"
    stream.close()


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "Hello"])
def test_a_name_that_is_no_name_is_refused_before_asking_the_mesh(name):
    """`fmesh delete ''` was answered with a redirect, taken for success: "function  deleted"."""
    sent = []
    mesh = client_answering(lambda request: sent.append(request) or httpx.Response(307))
    for call in (lambda: mesh.delete(name), lambda: mesh.delete_resource("trigger", name),
                 lambda: mesh.resource("peer", name), lambda: mesh.revoke_token(name), lambda: mesh.logs(name, 5)):
        with pytest.raises(DeployError, match="is not a .* name: lowercase letters"):
            call()
    assert sent == []
