"""Two clouds for real: each mesh in a network namespace of its own, joined by a veth pair,
so a bridge crosses an actual network link (not loopback) and each mesh listens on a
non-loopback address (where ingress auth is required by default). Skipped, with the
reason, where the machine does not allow network namespaces."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import FIXTURES, json_lines, wait_for

RECORD = FIXTURES / "functions" / "record" / "handler.py"
PORT = 8080


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def clouds() -> Iterator[dict[str, tuple[str, str]]]:
    """Two namespaces, `<name>: (namespace, address)`, joined by a veth pair; removed after."""
    tag = secrets.token_hex(3)
    names = {"a": (f"fm-a-{tag}", "10.213.7.1"), "b": (f"fm-b-{tag}", "10.213.7.2")}
    try:
        for namespace, _ in names.values():
            ip("netns", "add", namespace)
    except (OSError, subprocess.CalledProcessError) as exc:
        for namespace, _ in names.values():
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        pytest.skip(f"network namespaces are not available here: {getattr(exc, 'stderr', b'') or exc}")
    try:
        ip("link", "add", f"va{tag}", "type", "veth", "peer", "name", f"vb{tag}")
        for side, (namespace, address) in names.items():
            link = f"v{side}{tag}"
            ip("link", "set", link, "netns", namespace)
            ip("-n", namespace, "addr", "add", f"{address}/30", "dev", link)
            ip("-n", namespace, "link", "set", link, "up")
            ip("-n", namespace, "link", "set", "lo", "up")
        yield names
    finally:
        for namespace, _ in names.values():
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=10)


class NamespacedMesh:
    """`fmesh up` inside a namespace, on its non-loopback address; the CLI run there too."""

    def __init__(self, namespace: str, address: str, folder: Path, environ: dict[str, str]) -> None:
        self.namespace, self.url = namespace, f"http://{address}:{PORT}"
        self.address, self.folder = address, folder
        self.env = {**os.environ, "FMESH_TOKEN": "admin-token", "FMESH_URL": self.url,
                    "FMESH_DATA_DIR": str(folder / "data"), **environ}
        self.process: subprocess.Popen | None = None
        self.output = folder / "mesh.out"

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.namespace, *command], capture_output=True, text=True,
                              env=self.env, timeout=60, check=check)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "fmesh.cli", *args, check=check)

    def start(self, manifest: Path) -> NamespacedMesh:
        with self.output.open("ab") as out:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace, sys.executable, "-m", "fmesh.cli", "up", "--host",
                 self.address, "--port", str(PORT), "-f", str(manifest)], stdout=out, stderr=subprocess.STDOUT,
                env=self.env)
        wait_for(self._up, 30, message=f"the mesh in {self.namespace}:\n{self.output.read_text()}")
        return self

    def _up(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.output.read_text()
        return f"up on {self.url}" in self.output.read_text() and self.cli("status", check=False).returncode == 0

    def status(self) -> dict:
        return json.loads(self.cli("status", "--json").stdout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def test_a_bridge_between_two_network_namespaces(clouds, tmp_path):
    token = secrets.token_urlsafe(24)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    out = tmp_path / "b" / "events.jsonl"
    (tmp_path / "b" / "fmesh.yaml").write_text(f"""functions:
  record:
    handler: {RECORD}:handle
    on: [{{type: {{prefix: com.shop.}}}}]
    env: {{RECORD_TO: "{out}"}}
peers:
  cloud-a:
    auth: {{token_env: A_TOKEN}}
""")
    b_ns, b_address = clouds["b"]
    (tmp_path / "a" / "fmesh.yaml").write_text(f"""bridges:
  to-b:
    to: http://{b_address}:{PORT}
    filter: {{type: {{prefix: com.shop.}}}}
    auth: {{token_env: A_TOKEN}}
""")
    meshes = [NamespacedMesh(*clouds[side], tmp_path / side, {"A_TOKEN": token}) for side in ("a", "b")]
    try:
        a, b = meshes
        b.start(tmp_path / "b" / "fmesh.yaml")
        a.start(tmp_path / "a" / "fmesh.yaml")
        assert "ingress auth required" in a.output.read_text().lower()  # not loopback: auth by default
        for i in range(20):
            a.cli("send", "--type", "com.shop.order", "--source", "/shop", "--id", f"ns-{i}")
        wait_for(lambda: len(json_lines(out)) == 20, 60, message="20 events at B")
        attributes = [line["attributes"] for line in json_lines(out)]
        assert sorted(e["id"] for e in attributes) == sorted(f"ns-{i}" for i in range(20))
        assert {e["fmeshsender"] for e in attributes} == {"peer:cloud-a"}
        assert a.status()["bridges"][0]["peer_mesh"] == b.status()["mesh"]
    finally:
        for mesh in meshes:
            mesh.stop()
