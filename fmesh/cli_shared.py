"""What every `fmesh` command shares: where output goes, the mesh options, and how it fails."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from fmesh.errors import FmeshError
from fmesh.settings import read_token

T = TypeVar("T")

# Piped output is for scripts and logs: do not squeeze tables into 80 columns there.
console = Console(width=None if sys.stdout.isatty() else 200)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

MeshOption = Annotated[str, typer.Option("--mesh", envvar="FMESH_URL", help="URL of the mesh node.")]
TokenOption = Annotated[str | None, typer.Option(
    "--token", help="Control API token (default: FMESH_TOKEN, else <data dir>/token).")]
ManifestOption = Annotated[Path, typer.Option("-f", "--file", help="The manifest.")]
CaOption = Annotated[Path | None, typer.Option(
    "--ca", envvar="FMESH_CA", help="CA (PEM) of an HTTPS mesh with its own CA; for mTLS meshes the client "
    "certificate and key come from FMESH_CERT and FMESH_KEY.")]


def fail(message: str, code: int = 1) -> NoReturn:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)  # one line, as written
    raise typer.Exit(code)


def client(mesh: str, token: str | None, ca: Path | None = None):  # type: ignore[no-untyped-def]
    from fmesh.deploy.client import MeshClient
    from fmesh.tls import cli_context

    return MeshClient(mesh, token or read_token(), verify=cli_context(ca))


def ask(mesh: str, token: str | None, ca: Path | None, question: Callable[[Any], T]) -> T:
    """What `question` gets from the mesh's client; an error on the way ends the command (exit 1)."""
    try:
        with client(mesh, token, ca) as mesh_client:
            return question(mesh_client)
    except FmeshError as exc:
        fail(str(exc))
