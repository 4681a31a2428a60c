"""What the zygote and the function templates share: the JSON-lines protocol they speak,
watching and reaping their children, and how a freshly forked process cuts itself
loose from the one it was forked from."""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from collections.abc import Callable

PR_SET_CHILD_SUBREAPER = 36
MAX_FD = os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536


def send(fd: int, message: dict) -> None:
    """One JSON line, written whole (a spec with many secrets can outgrow one write)."""
    data = memoryview((json.dumps(message) + "\n").encode())
    while data:
        data = data[os.write(fd, data):]


class Lines:
    """The JSON lines arriving on `fd`, in whatever chunks they come."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = b""

    def read(self) -> list[dict] | None:
        """The whole lines one read completed; None once the other end has closed."""
        try:
            chunk = os.read(self.fd, 65536)
        except ConnectionError:
            return None
        if not chunk:
            return None
        *lines, self._buffer = (self._buffer + chunk).split(b"\n")
        return [json.loads(line) for line in lines]


class ChildWatch:
    """SIGCHLD as a readable file descriptor (the self-pipe trick), and reaping."""

    def __init__(self) -> None:
        self.fd, wake = os.pipe()
        os.set_blocking(wake, False)
        signal.set_wakeup_fd(wake)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def reaped(self) -> list[tuple[int, int | None, int | None]]:
        """(pid, exit code, signal) of every child that has ended since the last call."""
        os.set_blocking(self.fd, False)
        try:
            os.read(self.fd, 4096)
        except BlockingIOError:
            pass
        ended = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return ended
            if pid == 0:
                return ended
            code = os.waitstatus_to_exitcode(status)
            ended.append((pid, code if code >= 0 else None, -code if code < 0 else None))


def exited(replica: str, pid: int, code: int | None, signal_number: int | None) -> dict:
    return {"op": "exited", "replica": replica, "pid": pid, "code": code, "signal": signal_number}


def detach(keep: int | None = None) -> int | None:
    """In a child just forked from the zygote: its own session, default signals, and none
    of the zygote's files (its control pipes, other templates' channels) but stderr and
    `keep`, which becomes fd 3 (returned)."""
    os.setsid()
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    if keep is None:
        os.closerange(3, MAX_FD)
        return None
    if keep != 3:
        os.dup2(keep, 3)
    os.closerange(4, MAX_FD)
    return 3


def run_child(body: Callable[[], object]) -> None:
    """Run a forked child's `body` and end the process: it must never return into its parent."""
    try:
        body()
        code = 0
    except BaseException:  # noqa: BLE001 - whatever happens, the child ends here
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def prctl(option: int, value: int) -> bool:
    """Linux's prctl(2), where there is one (ctypes is loaded in the zygote anyway)."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError, ImportError):
        return False
