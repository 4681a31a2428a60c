"""private_dir and the umask a mesh gives its function processes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from fmesh import permissions


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Set the umask for a test; the old one (and fmesh.permissions' memory of it) come back."""
    previous = os.umask(0o022)
    remembered = permissions._started_with
    permissions._started_with = None
    yield lambda mask: os.umask(mask)
    os.umask(previous)
    permissions._started_with = remembered


def test_a_new_data_dir_is_0700_whatever_the_umask(tmp_path, umask):
    umask(0o000)
    assert permissions.private_dir(tmp_path / "a" / "data") is None
    assert mode(tmp_path / "a" / "data") == 0o700


def test_an_existing_data_dir_others_can_enter_is_tightened_and_said(tmp_path):
    tmp_path.chmod(0o751)
    assert permissions.private_dir(tmp_path) == f"data dir {tmp_path} could be read by other users (0751): made it 0700"
    assert mode(tmp_path) == 0o700
    assert permissions.private_dir(tmp_path) is None  # nothing more to say


@pytest.mark.skipif(os.geteuid() != 0, reason="making a folder another user owns needs root")
def test_a_data_dir_of_another_user_is_left_alone_with_a_warning(tmp_path):
    tmp_path.chmod(0o755)
    os.chown(tmp_path, 12345, -1)
    assert "is not ours to change: chmod 700 it" in permissions.private_dir(tmp_path)
    assert mode(tmp_path) == 0o755


def test_processes_started_for_functions_get_the_umask_the_mesh_had(umask):
    assert permissions.with_user_umask() == {}  # never changed: nothing to give back
    umask(0o027)
    permissions.keep_files_private()
    permissions.keep_files_private()  # twice: still the umask from before the first
    assert os.umask(0o077) == 0o077
    child = subprocess.run([sys.executable, "-c", "import os; print(oct(os.umask(0)))"], capture_output=True,
                           text=True, check=True, **permissions.with_user_umask())
    assert child.stdout.strip() == "0o27"
