"""Every CLI verb, against every way a user gets it wrong: a mesh that is down, a URL that is
not a mesh, a wrong token, bad arguments. Each must exit non-zero with one line on stderr
and no traceback. Verbs are enumerated from the typer app, so a verb added later without an
entry in VERBS fails `test_every_verb_has_an_entry`."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import typer
from support import ROOT, Mesh, free_port
from typer.testing import CliRunner

from fmesh.cli import app

MANIFEST = "{dir}/fmesh.yaml"


@dataclass(frozen=True)
class Verb:
    args: tuple[str, ...]              # minimal valid arguments ({dir}: a folder with a manifest)
    bad: tuple[str, ...] = ("--no-such-option",)  # arguments it must refuse
    mesh: bool = True                  # whether it talks to the mesh at --mesh


VERBS: dict[str, Verb] = {
    "up": Verb((), bad=("--launcher", "nope"), mesh=False),      # valid `up` would serve: only refusals run
    "sidecar": Verb((), bad=("--function", "Bad_Name", "--target", "http://127.0.0.1:1/", "--store", "memory://"),
                    mesh=False),
    "deploy": Verb(("-f", MANIFEST), bad=("-f", "{dir}/missing.yaml")),
    "send": Verb(("--type", "t", "--source", "/s"), bad=("--type", "t", "--source", "/s", "--data", "{oops")),
    "status": Verb(()),
    "logs": Verb(("hello",)),
    "dead-letters": Verb(("hello",), bad=("--replay", "1", "hello")),
    "trace": Verb(("some-id",), bad=()),                         # missing EVENT_ID
    "events tail": Verb(()),
    "events list": Verb((), bad=("--limit", "0")),
    "tokens create": Verb(("ci",), bad=("ci", "--allow", "[not, a, filter]")),
    "tokens list": Verb(()),
    "tokens revoke": Verb(("ci",), bad=()),
    "delete": Verb(("hello",), bad=()),
    "new": Verb(("hello",), bad=("Bad_Name",), mesh=False),
    "invoke": Verb(("hello",), bad=("hello", "--data", "{oops")),
    "get": Verb(("functions",), bad=("nonsense",)),
}


def verbs_of(command, prefix: str = "") -> Iterator[str]:
    """Every runnable command path of the CLI (`events tail`), groups walked into."""
    for name, sub in getattr(command, "commands", {}).items():
        path = f"{prefix}{name}"
        if getattr(sub, "commands", None):
            yield from verbs_of(sub, f"{path} ")
        else:
            yield path


ALL_VERBS = sorted(verbs_of(typer.main.get_command(app)))


def test_every_verb_has_an_entry():
    missing = sorted(set(ALL_VERBS) - set(VERBS))
    assert not missing, f"add these verbs to VERBS in {__file__}: {missing}"
    assert not set(VERBS) - set(ALL_VERBS), "VERBS names commands the CLI no longer has"


class NotFmesh:
    """A real HTTP server that is not fmesh: a file server's 404 and 501 HTML pages."""

    def __init__(self, folder: Path) -> None:
        class Quiet(SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass  # it would write into the CLI's captured stderr

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> Iterator[dict]:
    folder = tmp_path_factory.mktemp("matrix")
    (folder / "fmesh.yaml").write_text(
        f"functions:\n  hello:\n    handler: {ROOT}/functions/hello/handler.py:handle\n")
    (folder / "empty").mkdir()
    not_fmesh = NotFmesh(folder / "empty")
    mesh = Mesh(folder / "data", extra=["--ingress-auth", "required"]).start()
    yield {"dir": folder, "down": f"http://127.0.0.1:{free_port()}", "not-fmesh": not_fmesh.url, "mesh": mesh}
    mesh.stop()
    not_fmesh.close()


def run(places: dict, verb: str, args: tuple[str, ...], **env: str):
    words = [*verb.split(), *(a.replace("{dir}", str(places["dir"])) for a in args)]
    no_token_file = str(places["dir"] / "empty")  # FMESH_DATA_DIR: no token file to fall back on
    env = {"FMESH_DATA_DIR": no_token_file, "FMESH_URL": None, "FMESH_TOKEN": None, **env}
    return CliRunner().invoke(app, words, prog_name="fmesh", env=env)


def assert_one_line_error(result, *expected: str) -> None:
    shown = f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.exit_code != 0, shown
    assert result.exception is None or isinstance(result.exception, SystemExit), shown
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    assert "Traceback" not in result.stdout + result.stderr, shown
    assert "unexpectedly" not in lines[0], shown  # the catch-all for bugs
    for text in expected:
        assert text in lines[0], shown


MESH_VERBS = [v for v in VERBS if VERBS[v].mesh]


@pytest.mark.parametrize("verb", MESH_VERBS)
def test_a_mesh_that_is_down(places, verb):
    url = places["down"]
    assert_one_line_error(run(places, verb, VERBS[verb].args, FMESH_URL=url, FMESH_TOKEN="t"), f"cannot reach {url}")


@pytest.mark.parametrize("verb", MESH_VERBS)
def test_a_url_that_is_not_fmesh(places, verb):
    url = places["not-fmesh"]
    result = run(places, verb, VERBS[verb].args, FMESH_URL=url, FMESH_TOKEN="t")
    assert_one_line_error(result, f"{url} is not an fmesh mesh")


@pytest.mark.parametrize("verb", MESH_VERBS)
def test_a_wrong_token(places, verb):
    result = run(places, verb, VERBS[verb].args, FMESH_URL=places["mesh"].url, FMESH_TOKEN="wrong")
    assert_one_line_error(result, "refused FMESH_TOKEN", "--token")


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_bad_arguments(places, verb):
    mesh = places["mesh"]
    assert_one_line_error(run(places, verb, VERBS[verb].bad, FMESH_URL=mesh.url, FMESH_TOKEN=mesh.token))
