"""What `fmesh up` claims first: one owner per data dir, and a port bound before any write."""

from __future__ import annotations

import os
import socket

import pytest
from fmesh.deploy.claims import listen, lock_data_dir

from fmesh.errors import StartupError


def test_a_data_dir_has_one_owner_until_it_lets_go(tmp_path):
    data_dir = tmp_path / "data"
    with lock_data_dir(data_dir, 8123):
        with pytest.raises(StartupError) as refused:
            lock_data_dir(data_dir, 9000)  # flock is per open file: the same process is refused too
        assert str(refused.value) == f"data dir {data_dir} is in use by pid {os.getpid()} (port 8123)"
    with lock_data_dir(data_dir, 9000):
        pass
    assert oct((data_dir / "lock").stat().st_mode & 0o777) == "0o600"


def test_a_lock_without_its_owners_name_still_refuses(tmp_path):
    with lock_data_dir(tmp_path, 8123):
        (tmp_path / "lock").write_text("")  # taken, not yet written: the window between flock and write
        with pytest.raises(StartupError, match="in use by another process"):
            lock_data_dir(tmp_path, 9000)


def test_a_taken_port_is_named():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartupError, match=f"^port {port} is already in use on 127.0.0.1: "):
            listen("127.0.0.1", port)


def test_a_port_bound_here_is_listening_at_once():
    sockets = listen("127.0.0.1", 0)
    try:
        assert len(sockets) == 1
        with socket.create_connection(sockets[0].getsockname(), timeout=2):
            pass
    finally:
        for sock in sockets:
            sock.close()


def test_an_unknown_host_is_one_line():
    with pytest.raises(StartupError, match="^cannot listen on no-such-host.invalid:8080: "):
        listen("no-such-host.invalid", 8080)
