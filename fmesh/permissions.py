"""A mesh's files are its user's alone: the data dir holds the control token, every event,
dead letter and line of function output, so no other local user may read any of it.

A mesh process (`fmesh up`, `fmesh sidecar`) calls `keep_files_private` first: with the
umask 0o077, every file it or a library creates (SQLite's WAL and shm files, logs,
bundles, blobs) is 0600 and every folder 0700, whichever code path creates it. The
processes it starts for functions get back the umask the mesh was started with
(`child_umask`): a function's own files are as its author expects, not the mesh's.
"""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path
from typing import Any

PRIVATE_UMASK = 0o077
PRIVATE_DIR_MODE = 0o700

_started_with: int | None = None  # the umask before keep_files_private; None if never called


def keep_files_private() -> None:
    """Set this process's umask to 0o077, remembering the one it had for `child_umask`."""
    global _started_with
    previous = os.umask(PRIVATE_UMASK)
    if _started_with is None:
        _started_with = previous


def child_umask() -> int | None:
    """The umask for a function's process: the one the mesh was started with, or None when
    the mesh never changed its own (nothing to give back)."""
    return _started_with


def with_user_umask() -> dict[str, Any]:
    """Options for `asyncio.create_subprocess_exec` that start the process with `child_umask`.

    A `preexec_fn`, not Popen's `umask=`: uvloop, the mesh's loop, does not take `umask`;
    it forks for every process anyway, and os.umask is one system call in the child."""
    mask = child_umask()
    return {} if mask is None else {"preexec_fn": functools.partial(os.umask, mask)}


def private_dir(path: Path) -> str | None:
    """Make `path` (and missing parents) a folder only this user can enter.

    An existing one that other users can enter is tightened to 0700 when this user owns it
    (an older fmesh made it 0755; the token in it gives full control of the mesh) and the
    answer says so; one owned by another user is left alone and the answer warns. None
    when there was nothing to say. OSError from mkdir is the caller's."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    info = path.stat()
    loose = stat.S_IMODE(info.st_mode) & 0o077
    if not loose:
        return None
    was = f"{stat.S_IMODE(info.st_mode):04o}"
    if info.st_uid != os.geteuid():
        return f"data dir {path} ({was}) can be read by other users and is not ours to change: chmod 700 it"
    path.chmod(PRIVATE_DIR_MODE)
    return f"data dir {path} could be read by other users ({was}): made it 0700"
