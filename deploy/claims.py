"""What `fmesh up` claims before it reads or writes anything: its data dir and its port.

The data dir is owned through an exclusive `flock` on `<data dir>/lock`, held for the life
of the process (the kernel lets go when the process ends, however it ends). The file says
who holds it (`{"pid": ..., "port": ...}`) for the message a second `fmesh up` prints.
The port is bound here, before any state is touched, and the bound sockets go to uvicorn.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from pathlib import Path

from fmesh.errors import StartupError
from fmesh.permissions import private_dir

LOCK_FILE = "lock"


class DataDirLock:
    """An exclusive lock on a data dir; a context manager that releases it on exit."""

    def __init__(self, fd: int, note: str | None = None) -> None:
        self.fd = fd
        self.note = note  # what making the data dir private changed, to be said at startup

    def release(self) -> None:
        os.close(self.fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_data_dir(data_dir: Path, port: int) -> DataDirLock:
    """Own `data_dir` (made 0700, see `private_dir`), or raise StartupError naming the pid
    and port of its owner."""
    try:
        note = private_dir(data_dir)
        fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StartupError(f"cannot use data dir {data_dir}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        holder = owner(fd)
        os.close(fd)
        raise StartupError(f"data dir {data_dir} is in use by {holder}") from exc
    except OSError as exc:
        os.close(fd)
        raise StartupError(f"cannot lock data dir {data_dir}: {exc.strerror}") from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "port": port}).encode(), 0)
    return DataDirLock(fd, note)


def owner(fd: int) -> str:
    """Who holds the lock, as the lock file says: "pid N (port P)"."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
        return f"pid {int(holder['pid'])} (port {int(holder['port'])})"
    except (OSError, ValueError, TypeError, KeyError):
        return "another process"  # it has the lock but has not written its name yet


def listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address `host` resolves to (as uvicorn would bind)."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {where}: {exc.strerror}") from exc
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(addresses):
            sockets.append(bound(family, kind, proto, address))
    except OSError as exc:
        for sock in sockets:
            sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"port {port} is already in use on {host}: stop what listens there "
                               "or pick another with --port") from exc
        raise StartupError(f"cannot listen on {where}: {exc.strerror}") from exc
    return sockets


def bound(family: int, kind: int, proto: int, address: tuple) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart past TIME_WAIT, as uvicorn does
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # the IPv4 address gets its own socket
        sock.bind(address)
        sock.listen(2048)  # only listening claims the port: two bound sockets can share it
    except OSError:
        sock.close()
        raise
    return sock
