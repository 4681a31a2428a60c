"""A mesh's own settings kept in its data dir, and which token the CLI sends where."""

from __future__ import annotations

import pytest

from fmesh.errors import StartupError
from fmesh.settings import load_or_create_mesh_id, mesh_id_path


def test_a_mesh_id_is_made_once_and_kept(tmp_path):
    first = load_or_create_mesh_id(tmp_path, None)
    assert first.startswith("mesh-") and load_or_create_mesh_id(tmp_path, None) == first
    assert load_or_create_mesh_id(tmp_path, "given") == "given"


@pytest.mark.parametrize("stored", ["My Mesh", "", "UPPER", "-x"])
def test_a_mesh_id_file_that_holds_no_mesh_id_is_one_clear_error(tmp_path, stored):
    mesh_id_path(tmp_path).write_text(stored)
    with pytest.raises(StartupError, match="no mesh id"):
        load_or_create_mesh_id(tmp_path, None)


def test_send_hands_the_data_dirs_token_only_to_a_mesh_on_this_machine(tmp_path, monkeypatch):
    from fmesh.cli import _publish_token

    (tmp_path / "token").write_text("local-admin-token\n")
    monkeypatch.setenv("FMESH_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("FMESH_TOKEN", raising=False)
    assert _publish_token("http://127.0.0.1:8080", None) == ("local-admin-token", f"the token file {tmp_path}/token")
    assert _publish_token("http://localhost:8080", None)[0] == "local-admin-token"
    assert _publish_token("https://mesh-eu.example.com", None)[0] is None
    assert _publish_token("https://mesh-eu.example.com", "given") == ("given", "the --token flag")
    monkeypatch.setenv("FMESH_TOKEN", "from-env")
    assert _publish_token("https://mesh-eu.example.com", None) == ("from-env", "FMESH_TOKEN")


@pytest.mark.parametrize(("host", "public"), [("127.0.0.1", True), ("::1", True), ("[::1]", True),
                                              ("localhost", True), ("127.0.0.2", True), ("0.0.0.0", False),
                                              ("::", False), ("10.0.0.5", False), ("mesh.example.com", False)])
def test_metrics_and_docs_are_public_by_default_only_on_loopback(tmp_path, host, public):
    from fmesh.settings import NodeSettings

    assert NodeSettings(data_dir=tmp_path, host=host).metrics_public is public
    assert NodeSettings(data_dir=tmp_path, host=host, public_metrics=True).metrics_public is True
    assert NodeSettings(data_dir=tmp_path, host=host, public_metrics=False).metrics_public is False
