"""HTTPS and mTLS through a real `fmesh up`, with a CA, server and client certificates the
test makes (tests/tls.py): a peer known by its certificate's subject, a client without a
certificate refused in the handshake, the CLI with --ca, and an HTTP subscription with
`tls: {ca, cert, key}` posting to a receiver that itself requires a client certificate."""

from __future__ import annotations

import json
import ssl
import uuid

import httpx
import pytest
from support import Receiver, wait_for, write_manifest
from tls import make_tls


def client_context(files, with_certificate: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(files.ca_file))
    if with_certificate:
        context.load_cert_chain(str(files.client.cert), str(files.client.key))
    return context


def server_context(files, require_client: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(files.server.cert), str(files.server.key))
    if require_client:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(str(files.ca_file))
    return context


def event_headers(**extra: str) -> dict[str, str]:
    return {"ce-specversion": "1.0", "ce-id": str(uuid.uuid4()), "ce-source": "/tls", "ce-type": "com.shop.order",
            **extra}


@pytest.fixture
def files(tmp_path):
    return make_tls(tmp_path / "tls", client_cn="mesh-asia.test")


@pytest.fixture
def tls_receiver(files):
    receiver = Receiver(tls=server_context(files, require_client=True))
    yield receiver
    receiver.close()


@pytest.fixture
def mtls_mesh(mesh_factory, files):
    extra = ["--ingress-auth", "required", "--tls-cert", str(files.server.cert), "--tls-key", str(files.server.key),
             "--tls-client-ca", str(files.ca_file)]
    return mesh_factory(extra=extra, scheme="https", client={"verify": client_context(files)}).start()


def deploy(mesh, folder, receiver_url: str, files) -> None:
    text = f"""
peers:
  asia:
    auth: {{{{subject: mesh-asia.test}}}}
subscriptions:
  seen:
    filter: {{{{}}}}
    to: {receiver_url}/seen
    delivery: {{{{retries: 50, delay: 50ms, max_delay: 500ms}}}}
    options: {{{{tls: {{{{ca: {files.ca_file}, cert: {files.client.cert}, key: {files.client.key}}}}}}}}}
"""
    mesh.cli("deploy", "-f", str(write_manifest(folder, text)), **tls_env(files))


def tls_env(files) -> dict[str, str]:
    return {"FMESH_CA": str(files.ca_file), "FMESH_CERT": str(files.client.cert), "FMESH_KEY": str(files.client.key)}


def test_mtls_end_to_end_a_peer_by_certificate_to_a_tls_receiver(mtls_mesh, files, tmp_path, tls_receiver):
    mesh = mtls_mesh
    assert f"fmesh mesh up on https://127.0.0.1:{mesh.port}" in mesh.log() and "mTLS" in mesh.log()
    deploy(mesh, tmp_path, tls_receiver.url, files)
    headers = event_headers(**{"ce-fmeshsender": "admin"})
    response = httpx.post(mesh.url + "/", headers=headers, verify=client_context(files), timeout=10)
    assert response.status_code == 202
    wait_for(lambda: tls_receiver.to("/seen"), 15, message="the event at the TLS receiver")
    [delivered] = tls_receiver.to("/seen")
    assert delivered["headers"]["ce-id"] == headers["ce-id"]
    assert delivered["headers"]["ce-fmeshsender"] == "peer:asia"  # the certificate's subject, not what was sent


def test_a_client_without_a_certificate_is_refused_in_the_handshake(mtls_mesh, files):
    mesh = mtls_mesh
    with pytest.raises(httpx.TransportError):  # the TLS handshake fails: no HTTP request is made
        httpx.post(mesh.url + "/", headers=event_headers(authorization=f"Bearer {mesh.token}"),
                   verify=client_context(files, with_certificate=False), timeout=10)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):  # and we trust only its CA
        httpx.get(mesh.url + "/healthz", timeout=10)
    status = json.loads(mesh.cli("status", "--json", "--ca", str(files.ca_file), FMESH_CERT=str(files.client.cert),
                                 FMESH_KEY=str(files.client.key)).stdout)
    assert status["sinks"] == [] and status["functions"] == []  # nothing was stored or deployed


def test_the_cli_says_to_pass_the_ca(mtls_mesh, files):
    refused = mtls_mesh.cli("status", check=False)
    assert refused.returncode == 1 and "--ca" in refused.stderr and "Traceback" not in refused.stderr


def test_a_sink_without_the_client_certificate_is_retried_and_says_why(mesh, files, tmp_path, tls_receiver):
    text = f"""
subscriptions:
  seen:
    filter: {{{{}}}}
    to: {tls_receiver.url}/seen
    delivery: {{{{retries: 50, delay: 50ms, max_delay: 500ms}}}}
    options: {{{{tls: {{{{ca: {files.ca_file}}}}}}}}}
"""
    mesh.cli("deploy", "-f", str(write_manifest(tmp_path, text)))
    httpx.post(mesh.url + "/", headers=event_headers(), timeout=10)

    def sink():
        return next(s for s in mesh.api("GET", "/v1/status").json()["sinks"] if s["name"] == "subscription:seen")

    wait_for(lambda: sink()["retried"] >= 1, 15, message="a retried delivery")
    assert sink()["delivered"] == 0 and tls_receiver.to("/seen") == []
    assert sink()["dead_lettered"] == 0, "a TLS refusal is retried: the certificate may be fixed"
    # TLS 1.3 refuses a missing client certificate after the handshake: the client sees the
    # alert, or (when the server hangs up first) only a broken read. Either way, named.
    last_error = sink()["last_error"]
    assert tls_receiver.url in last_error and ("CERTIFICATE_REQUIRED" in last_error or "ReadError" in last_error)


def test_https_up_refuses_a_missing_certificate_in_one_line(mesh_factory, tmp_path):
    mesh = mesh_factory(extra=["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(tmp_path / "nope.pem")])
    result = mesh.cli("up", "--port", str(mesh.port), "--data-dir", str(mesh.data_dir), *mesh.extra, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: --tls-cert {tmp_path / 'nope.pem'}: no such file"]
