"""Hostile uploads to a real mesh's `PUT /v1/bundles/{digest}`: 400 with the reason for
what is not a bundle, nothing left behind, memory bounded, and the ingress serving on."""

from __future__ import annotations

import socket
import threading
import time

import httpx
from support import tar_gz, wait_for

DIGEST = "ab" * 32


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def mesh_pid(mesh) -> int:
    """The server process: `fmesh up` execs into it, so it keeps the pid."""
    return mesh.process.pid


def upload(mesh, data: bytes, digest: str = DIGEST) -> httpx.Response:
    return mesh.api("PUT", f"/v1/bundles/{digest}", content=data, headers={"content-type": "application/gzip"})


def leftovers(mesh) -> list[str]:
    folder = mesh.data_dir / "bundles"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_what_is_not_a_bundle_is_a_400_with_the_reason_and_leaves_nothing(mesh):
    good = tar_gz({"handler.py": b"def handle(e): pass\n"})
    cases = {
        b"not gzip at all": "not a readable bundle",
        good[: len(good) // 2]: "not a readable bundle",
        tar_gz({"__pycache__/x.pyc": b"evil"}): "is not one fmesh packs",
        tar_gz({"../escape.py": b"x"}): "not a readable bundle",
        good: "does not match its digest",
    }
    for data, reason in cases.items():
        answer = upload(mesh, data)
        assert answer.status_code == 400, answer.text
        assert reason in answer.json()["error"], answer.text
    assert leftovers(mesh) == []


def test_a_small_upload_that_unpacks_past_the_cap_is_refused_without_memory_or_a_stalled_ingress(mesh_factory):
    mesh = mesh_factory(extra=["--max-bundle-bytes", str(48 * 1024 * 1024)]).start()
    bomb = tar_gz({f"f{i:03}.bin": bytes(1024 * 1024) for i in range(64)})  # 64 MiB from ~64 KB
    assert len(bomb) < 256 * 1024
    before = rss_kib(mesh_pid(mesh))
    done: list[tuple[float, int]] = []
    stop = threading.Event()

    def publish() -> None:
        with httpx.Client(base_url=mesh.url, timeout=30) as client:
            n = 0
            while not stop.is_set():
                n += 1
                headers = {"ce-specversion": "1.0", "ce-id": f"e{n}", "ce-source": "/t", "ce-type": "t"}
                done.append((time.monotonic(), client.post("/", headers=headers).status_code))

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        started = time.monotonic()
        answer = upload(mesh, bomb)
        ended = time.monotonic()
        peak = rss_kib(mesh_pid(mesh))
    finally:
        stop.set()
        publisher.join(30)
    assert answer.status_code == 400 and "unpacks to more than" in answer.json()["error"], answer.text
    assert leftovers(mesh) == []
    during = [status for at, status in done if started < at < ended]
    print(f"upload refused in {ended - started:.2f}s; {len(during)} events accepted meanwhile; "
          f"RSS {before // 1024} -> {peak // 1024} MiB")
    assert len(during) >= 3 and set(during) == {202}, "the ingress stalled while the upload was checked"
    assert peak - before < 64 * 1024, f"RSS grew by {(peak - before) // 1024} MiB for a refused upload"


def test_an_archive_past_the_upload_limit_is_a_413_before_it_is_read(mesh):
    with socket.create_connection(("127.0.0.1", mesh.port), timeout=30) as conn:
        conn.sendall(f"PUT /v1/bundles/{DIGEST} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {mesh.token}\r\n"
                     f"Content-Length: {300 * 1024 * 1024}\r\n\r\n".encode())
        reply = read_answer(conn)  # no body sent: the answer comes from the declared length alone
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"exceeds" in reply


def read_answer(conn: socket.socket) -> bytes:
    """One HTTP answer off a raw socket: its head, then as many body bytes as it declares."""
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += conn.recv(4096) or b"\r\n\r\n"
    head, _, body = reply.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        body += conn.recv(4096) or b" " * length
    return head + b"\r\n\r\n" + body


def test_an_upload_cut_off_midway_leaves_no_traceback_and_nothing_behind(mesh):
    with socket.create_connection(("127.0.0.1", mesh.port), timeout=30) as conn:
        conn.sendall(f"PUT /v1/bundles/{DIGEST} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {mesh.token}\r\n"
                     "Content-Length: 1000\r\n\r\n0123456789".encode())
    assert mesh.api("GET", "/healthz").status_code == 200
    assert "Traceback" not in mesh.log() and "ERROR" not in mesh.log(), mesh.log()[-2000:]
    assert leftovers(mesh) == []


def test_deploy_leaves_out_the_defaults_and_fmeshignore_and_warns_of_a_big_bundle(mesh, tmp_path):
    import os

    folder = tmp_path / "fn"
    files = {"handler.py": b"def handle(e):\n    return {'ok': True}\n", ".env": b"SECRET=1\n", "venv/x.py": b"",
             ".venv/bin/python": b"", "node_modules/left/index.js": b"", ".git/HEAD": b"ref\n", "notes.log": b"",
             "model.bin": os.urandom(11_000_000), ".fmeshignore": b"*.log\n!.env\n"}
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    (tmp_path / "fmesh.yaml").write_text("functions:\n  big:\n    handler: fn/handler.py:handle\n"
                                         "    on: [{type: com.test.big}]\n")
    (folder / ".fmeshignore").write_bytes(b"*.log\n!\n")
    refused = mesh.cli("deploy", "-f", str(tmp_path / "fmesh.yaml"), check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert f"error: {folder / '.fmeshignore'}:2: '!' is not a gitignore pattern" in refused.stderr, refused.stderr
    (folder / ".fmeshignore").write_bytes(files[".fmeshignore"])
    deployed = mesh.cli("deploy", "-f", str(tmp_path / "fmesh.yaml"))
    warnings = [line for line in deployed.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "the code of big is 11.0 MB packed, over 10.0 MB" in warnings[0], deployed.stderr
    assert "model.bin (11.0 MB)" in warnings[0] and ".fmeshignore" in warnings[0], deployed.stderr
    assert "Traceback" not in deployed.stderr and "uploaded big: 4 files" in deployed.stdout, deployed.stdout
    digest = mesh.api("GET", "/v1/functions/big").json()["bundle"]
    shipped = sorted(p.name for p in (mesh.data_dir / "bundles" / digest).iterdir() if p.name != "__pycache__")
    assert shipped == [".env", ".fmeshignore", "handler.py", "model.bin"]


HOLDING = """import os
import time

VERSION = {version}


def handle(event):
    open(os.environ["STARTED"], "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(os.environ["RELEASE"]) and time.monotonic() < deadline:
        time.sleep(0.05)
"""


def test_code_no_version_uses_goes_after_the_grace_but_not_while_an_old_version_finishes(mesh_factory, tmp_path):
    from fmesh.deploy.bundle import pack

    mesh = mesh_factory(extra=["--bundle-grace", "1s"]).start()
    started, release = tmp_path / "started", tmp_path / "release"
    (tmp_path / "fn").mkdir()
    (tmp_path / "fmesh.yaml").write_text(
        "functions:\n  hold:\n    handler: fn/handler.py:handle\n    on: [{type: com.test.hold}]\n"
        f"    timeout: 60s\n    env: {{STARTED: '{started}', RELEASE: '{release}'}}\n")

    def deploy(version: int) -> str:
        (tmp_path / "fn" / "handler.py").write_text(HOLDING.format(version=version))
        mesh.cli("deploy", "-f", str(tmp_path / "fmesh.yaml"))
        return mesh.api("GET", "/v1/functions/hold").json()["bundle"]

    def kept(digest: str) -> bool:
        return (mesh.data_dir / "bundles" / digest).is_dir() or (mesh.data_dir / "blobs" / digest).exists()

    first = deploy(1)
    mesh.cli("send", "--type", "com.test.hold", "--source", "/t")
    wait_for(started.exists, 30, message="the first version to take the event")
    second = deploy(2)  # the first version keeps its event until it is done
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "handler.py").write_text("def handle(e): pass\n")
    uploaded = pack(tmp_path / "other")
    assert upload(mesh, uploaded.data, uploaded.digest).status_code == 200
    assert kept(uploaded.digest)  # an upload waits for its deploy, for the grace
    wait_for(lambda: not kept(uploaded.digest), 30, message="an upload no deploy used to be removed")
    assert kept(first), "the code of a version still finishing its event was removed"
    release.touch()
    wait_for(lambda: not kept(first), 30, message="the first version's code to go once it finished")
    assert kept(second) and (mesh.data_dir / "bundles" / second).is_dir()
    assert "Traceback" not in mesh.log()


def test_up_with_a_manifest_warns_of_a_big_bundle_too(mesh_factory, tmp_path):
    import os

    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "handler.py").write_text("def handle(e):\n    return None\n")
    (tmp_path / "fn" / "model.bin").write_bytes(os.urandom(11_000_000))
    (tmp_path / "fmesh.yaml").write_text("functions:\n  big:\n    handler: fn/handler.py:handle\n"
                                         "    on: [{type: com.test.big}]\n")
    mesh = mesh_factory().start("-f", str(tmp_path / "fmesh.yaml"))
    wait_for(lambda: "deployed " in mesh.log(), 30, message="the manifest deployed")
    [warning] = [line for line in mesh.log().splitlines() if "warning: the code of big" in line]
    assert "11.0 MB packed, over 10.0 MB" in warning and "model.bin (11.0 MB)" in warning, mesh.log()
