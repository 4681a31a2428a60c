"""The CLI's small promises of issue 16: a --mesh without a scheme, a refused token named by
its source, dead-letter replay of several ids, a function that does not exist, --data that
is not JSON and --data-text, the README's broken manifests, shell completion."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from support import ROOT, Mesh, run_cli, wait_for, write_manifest
from typer.testing import CliRunner

from fmesh.cli import app


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> Iterator[Mesh]:
    folder = tmp_path_factory.mktemp("fixes")
    mesh = Mesh(folder / "data").start()
    manifest = write_manifest(folder, """
functions:
  broken:
    handler: {fixtures}/fail/handler.py:handle
    on: [{{type: doomed}}]
    delivery: {{retries: 0}}
""")
    mesh.cli("deploy", "-f", str(manifest))
    yield mesh
    mesh.stop()


def error_line(result) -> str:
    assert result.returncode != 0, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_mesh_without_a_scheme_is_http(mesh):
    assert mesh.cli("status", "--mesh", f"127.0.0.1:{mesh.port}").returncode == 0
    assert mesh.cli("status", FMESH_URL=f"localhost:{mesh.port}").returncode == 0


def test_a_refused_token_names_where_it_came_from(mesh, tmp_path):
    flag = error_line(mesh.cli("status", "--token", "wrong", check=False))
    assert f"{mesh.url} answered 401: it refused the --token flag" in flag and "FMESH_TOKEN" in flag
    (tmp_path / "token").write_text("wrong-too\n")
    from_file = error_line(mesh.cli("status", check=False, FMESH_TOKEN="", FMESH_DATA_DIR=str(tmp_path)))
    assert f"refused the token file {tmp_path / 'token'}" in from_file and "--token" in from_file
    (tmp_path / "token").unlink()
    none = error_line(mesh.cli("status", check=False, FMESH_TOKEN="", FMESH_DATA_DIR=str(tmp_path)))
    assert "refused a request without a token" in none, none


def test_a_token_out_of_scope_names_its_source_and_scope(mesh):
    reader = mesh.cli("tokens", "create", "reader", "--scope", "read").stdout.strip()
    refused = error_line(mesh.cli("tokens", "create", "other", check=False, FMESH_TOKEN=reader))
    expected = "answered 403: it refused FMESH_TOKEN: token:reader has scope read: this needs an admin token"
    assert expected in refused, refused
    assert mesh.cli("status", FMESH_TOKEN=reader).returncode == 0


def test_replay_takes_several_ids_after_one_flag(mesh):
    for n in range(3):
        mesh.cli("send", "--type", "doomed", "--source", "/t", "--data", f'{{"n": {n}}}')
    letters = wait_for(lambda: (found := mesh.api("GET", "/v1/dead-letters").json()["dead_letters"])
                       and len(found) >= 3 and found, 20, message="three dead letters")
    ids = [str(d["id"]) for d in letters[:3]]
    replayed = mesh.cli("dead-letters", "--replay", *ids)
    assert "replayed 3 dead letters" in replayed.stdout, replayed.stdout
    refused = error_line(mesh.cli("dead-letters", "--replay", ids[0], "broken", check=False))
    assert "--replay-all broken" in refused


def test_dead_letters_of_a_function_that_does_not_exist(mesh):
    line = error_line(mesh.cli("dead-letters", "nosuch", check=False))
    assert "there is no function 'nosuch'" in line
    assert mesh.cli("dead-letters", "broken").returncode == 0  # one that exists, dead letters or not


def test_data_must_be_json_unless_data_text(mesh):
    line = error_line(mesh.cli("send", "--type", "doomed", "--source", "/t", "--data", "hello there", check=False))
    assert "--data is not JSON" in line and "--data-text" in line
    sent = mesh.cli("send", "--type", "doomed", "--source", "/text", "--data-text", "hello there")
    event_id = sent.stdout.split()[0]

    def letter():
        letters = mesh.api("GET", "/v1/dead-letters").json()["dead_letters"]
        return next((d for d in letters if d["event"]["attributes"]["id"] == event_id), None)

    event = wait_for(letter, 20, message="the text event's dead letter")["event"]
    assert event["attributes"]["datacontenttype"] == "text/plain"
    assert "hello there" in str(event)


def test_the_readmes_broken_manifests_fail_as_it_shows(mesh):
    broken = error_line(mesh.cli("deploy", "-f", "examples/broken/broken.yaml", check=False))
    assert broken.startswith("error: examples/broken/broken.yaml:4: functions.hello.scale.idel_timeout: "
                             "unknown field 'idel_timeout'"), broken
    typo = error_line(mesh.cli("deploy", "-f", "examples/broken/typo.yaml", check=False))
    assert "function hello did not start, so it was not deployed" in typo and "SyntaxError" in typo, typo
    assert "hello" not in {f["name"] for f in mesh.api("GET", "/v1/functions").json()["functions"]}
    assert (ROOT / "examples/broken/broken.yaml").exists()


def test_shell_completion_can_be_installed():
    shown = CliRunner().invoke(app, ["--help"], prog_name="fmesh")
    assert "--install-completion" in shown.stdout and "--show-completion" in shown.stdout
    completed = CliRunner().invoke(app, [], prog_name="fmesh", env={
        "_FMESH_COMPLETE": "complete_bash", "COMP_WORDS": "fmesh dead", "COMP_CWORD": "1"})
    assert completed.exit_code == 0 and completed.stdout.split() == ["dead-letters"], completed.stdout


def test_a_bad_duration_names_its_option(tmp_path):
    result = run_cli(["up", "--data-dir", str(tmp_path), "--bundle-grace", "soon"], env=dict(os.environ), check=False)
    assert result.returncode == 2  # a usage error, as click exits for one
    assert result.stderr.strip().splitlines() == [
        "error: --bundle-grace: expected a duration such as 200ms, 5s, 1m30s or PT1S, got 'soon'"]


@pytest.mark.parametrize("args, says", [
    (["up", "--ingress-auth", "maybe"], "--ingress-auth must be required, optional or off, not 'maybe'"),
    (["up", "--log-level", "loud"], "--log-level must be debug, info, warning or error, not 'loud'"),
    (["new", "x", "--lang", "ruby", "-f", "{tmp}/fmesh.yaml"], "--lang must be one of"),
    (["get", "functions", "-o", "xml"], "-o must be yaml or json, not 'xml'"),
    (["get", "gadgets"], "unknown kind 'gadgets'"),
    (["send", "--type", "t", "--source", "/s", "--data-text", "x", "--content-type", "not a type"],
     "--content-type must be a media type such as text/plain"),
])
def test_a_wrong_option_value_is_a_usage_error_and_nothing_is_done(tmp_path, args, says):
    """Each used to exit 1, as for a failure on the way; scripts tell the two apart by 2."""
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    result = CliRunner().invoke(app, args, env={"FMESH_DATA_DIR": str(tmp_path / "data"),
                                                "FMESH_URL": "http://127.0.0.1:9"})
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and says in lines[0], result.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "functions").exists()
