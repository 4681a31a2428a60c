"""A mesh whose disk fills up: the ingress answers 503 naming the full disk (never 500,
never a hang), nothing it acknowledged is lost, its background work (deliveries, acks,
dead letters, heartbeats, function logs) outlives the failed writes, and it takes events
again once there is space.

The data dir is a 4 MiB tmpfs mounted for the test (tests/small_disk.py); where mounting
is not allowed that test is skipped with the reason, and the file-size-limit test, which
needs no mount, still runs."""

from __future__ import annotations

import resource
import time
import uuid
from pathlib import Path

import httpx
import pytest
from small_disk import small_disk
from support import wait_for, write_manifest

PAYLOAD = b"x" * 4096

HANDLERS = '''
import os
import resource
import time

def keep(event):
    if float(event.get("sleep", 0)):
        time.sleep(float(event["sleep"]))             # still in flight when the disk fills,
        print("y" * 8192, flush=True)                 # then a log line that needs new pages
    print(f"got {event['id']}", flush=True)           # a line in the function's log, in the data dir
    with open(os.environ["OUT"], "a") as f:
        f.write(event["id"] + "\\n")

def refuse(event):
    time.sleep(float(event.get("sleep", 0)))
    raise ValueError(f"refusing {event['id']}")       # no retries: straight to the dead letters
'''


@pytest.fixture
def disk(tmp_path):
    with small_disk(tmp_path / "small", "4m") as disk:
        yield disk


@pytest.fixture
def full_mesh(disk, mesh_factory):
    """A mesh with its data dir on the small disk (its own output goes beside it). Set up
    after `disk`, so it is stopped before the disk is unmounted."""
    mesh = mesh_factory(disk.path).start(wait=False)
    wait_for(mesh.healthy, 60, message=f"mesh on {mesh.url} to start")  # a busy machine starts it slowly
    return mesh


def deploy(mesh, folder: Path, out: Path) -> None:
    (folder / "handlers.py").write_text(HANDLERS)
    manifest = write_manifest(folder, f"""
functions:
  keep:
    handler: {folder}/handlers.py:keep
    on: [{{{{type: disk.keep}}}}]
    env: {{{{OUT: "{out}"}}}}
    scale: {{{{min: 1, max: 1, concurrency: 8}}}}
  refuse:
    handler: {folder}/handlers.py:refuse
    on: [{{{{type: disk.refuse}}}}]
    scale: {{{{min: 1, max: 1, concurrency: 8}}}}
    delivery: {{{{retries: 0}}}}
""")
    mesh.cli("deploy", "-f", str(manifest))
    wait_for(lambda: mesh.status("keep").get("ready") == 1 and mesh.status("refuse").get("ready") == 1, 30,
             message="both functions warm")


def publish(mesh, event_type: str = "disk.keep", sleep: float = 0) -> tuple[int, str, dict]:
    event_id = str(uuid.uuid4())
    started = time.monotonic()
    response = httpx.post(mesh.url + "/", content=PAYLOAD, timeout=10, headers={
        "ce-specversion": "1.0", "ce-type": event_type, "ce-source": "/disk", "ce-id": event_id,
        "ce-sleep": str(sleep), "content-type": "application/octet-stream"})
    assert time.monotonic() - started < 10, "a full disk must not make the ingress hang"
    return response.status_code, event_id, response.json() if response.content else {}


def delivered(out: Path) -> set[str]:
    return set(out.read_text().split()) if out.exists() else set()


def heartbeat_age(mesh) -> float:
    [node] = mesh.api("GET", "/v1/status").json()["nodes"]
    return node["age"]


def test_a_full_disk_is_a_503_that_loses_nothing_and_the_mesh_takes_events_again(full_mesh, disk, tmp_path):
    mesh, out = full_mesh, tmp_path / "delivered.txt"  # outside the small disk
    deploy(mesh, tmp_path, out)
    kept, slow, refused = [], [], 0
    for _ in range(20):
        status, event_id, _ = publish(mesh)
        assert status == 202
        kept.append(event_id)
    for event_type in ("disk.keep", "disk.refuse") * 3:  # in flight while the disk fills: acks, dead letters
        status, event_id, _ = publish(mesh, event_type, sleep=3)
        assert status == 202
        slow.append(event_id) if event_type == "disk.keep" else None
        refused += event_type == "disk.refuse"

    disk.fill()
    statuses, refusals = [], []
    for n in range(400):  # until the event log's own room (WAL, free pages) is used up too
        event_type = "disk.refuse" if n % 2 else "disk.keep"
        status, event_id, body = publish(mesh, event_type)
        statuses.append(status)
        if status == 202 and event_type == "disk.keep":
            kept.append(event_id)
        refused += status == 202 and event_type == "disk.refuse"
        if status == 503:
            refusals.append(body["error"])
            if len(refusals) >= 5:
                break
    assert set(statuses) <= {202, 503}, statuses
    assert len(refusals) >= 5, f"the disk never filled: {statuses}"
    assert all("disk full, no space left on device" in error for error in refusals), refusals
    wait_for(lambda: set(slow) <= delivered(out), 30, message="the slow events handled while the disk is full")
    assert mesh.process.poll() is None and mesh.healthy()

    def accepted_again() -> bool:
        status, event_id, _ = publish(mesh)
        kept.extend([event_id] if status == 202 else [])
        return status == 202

    disk.free()
    wait_for(accepted_again, 30, message="the ingress to take events again")
    for _ in range(20):
        status, event_id, _ = publish(mesh)
        assert status == 202
        kept.append(event_id)
    kept += slow  # (event_id: the last event published, after the disk had room again)
    wait_for(lambda: set(kept) <= delivered(out), 60,
             message="every accepted event delivered")
    wait_for(lambda: mesh.status("refuse")["dead_lettered"] == refused, 30,
             message=f"the {refused} accepted disk.refuse events in the dead letters")
    logs = wait_for(lambda: (text := mesh.cli("logs", "keep", "-n", "100000").stdout) and f"got {event_id}" in text
                    and text, 15, message="the function's log stream to outlive the failed writes")
    assert "log lines were not written (No space left on device)" in logs
    wait_for(lambda: heartbeat_age(mesh) < 5, 15, message="the heartbeat to beat again")
    assert mesh.process.poll() is None
    assert "Traceback" not in mesh.log() and "never retrieved" not in mesh.log(), mesh.log()


@pytest.fixture
def limited_mesh(mesh_factory):
    """A mesh whose file size limit the test may lower; raised again before it is stopped."""
    mesh = mesh_factory().start(wait=False)
    wait_for(mesh.healthy, 60, message=f"mesh on {mesh.url} to start")
    yield mesh
    if mesh.process.poll() is None:
        resource.prlimit(mesh.process.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def test_a_file_size_limit_is_a_503_naming_it_not_a_dead_mesh(limited_mesh, tmp_path):
    """The other way writes fail for want of room, and one that needs no mount: RLIMIT_FSIZE
    (`ulimit -f`, systemd's LimitFSIZE). Its SIGXFSZ would kill a process that did not ignore
    it (Python does); the writes fail with EFBIG, the ingress answers 503 naming the limit,
    and takes events again once the limit is raised. Nothing accepted is lost."""
    mesh, out = limited_mesh, tmp_path / "delivered.txt"
    deploy(mesh, tmp_path, out)
    db = mesh.data_dir / "mesh.db"
    limit = max(db.stat().st_size, Path(f"{db}-wal").stat().st_size) + 65536
    resource.prlimit(mesh.process.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    kept, refusals = [], []
    for _ in range(400):  # they pile up (each handler sleeps), so the files must grow
        status, event_id, body = publish(mesh, sleep=5)
        assert status in (202, 503) and mesh.process.poll() is None, (status, body, mesh.log())
        if status == 202:
            kept.append(event_id)
        else:
            refusals.append(body["error"])
            if len(refusals) >= 3:
                break
    assert len(refusals) >= 3, "the file size limit was never reached"
    assert all("file size limit" in error for error in refusals), refusals
    resource.prlimit(mesh.process.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    status, event_id, _ = publish(mesh)
    assert status == 202
    kept.append(event_id)
    wait_for(lambda: set(kept) <= delivered(out), 120, message="every accepted event delivered")
    assert mesh.process.poll() is None
