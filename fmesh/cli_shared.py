"""What every `fmesh` command shares: where output goes, the mesh options, and how it fails."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from fmesh.errors import FmeshError
from fmesh.settings import find_token

try:  # newer typer carries its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - typer on the click package
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError  # type: ignore[assignment]

T = TypeVar("T")

# Piped output is for scripts and logs: do not squeeze tables into 80 columns there.
console = Console(width=None if sys.stdout.isatty() else 200)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def mesh_url(url: str) -> str:
    """--mesh as typed: `127.0.0.1:8080` means http://127.0.0.1:8080; only http(s) URLs go."""
    url = url.strip()
    if "://" not in url:
        url = f"http://{url}"
    try:
        parts = urlsplit(url)
    except ValueError:  # such as an unclosed [ of an IPv6 address
        raise typer.BadParameter(f"{url!r} is not a URL, e.g. http://127.0.0.1:8080 or http://[::1]:8080") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise typer.BadParameter(f"{url!r} is not an http:// or https:// URL of a mesh, e.g. http://127.0.0.1:8080")
    try:
        parts.port  # noqa: B018 - urllib checks the port when it is read
    except ValueError:
        raise typer.BadParameter(f"{url!r} has no valid port (1-65535), e.g. http://127.0.0.1:8080") from None
    return url


MeshOption = Annotated[str, typer.Option(
    "--mesh", envvar="FMESH_URL", callback=mesh_url,
    help="URL of the mesh node (http:// is added when it has no scheme: --mesh 127.0.0.1:8080).")]
TokenOption = Annotated[str | None, typer.Option(
    "--token", help="Control API token (default: FMESH_TOKEN, else <data dir>/token).")]
ManifestOption = Annotated[Path, typer.Option("-f", "--file", help="The manifest.")]
CaOption = Annotated[Path | None, typer.Option(
    "--ca", envvar="FMESH_CA", help="CA (PEM) of an HTTPS mesh with its own CA; for mTLS meshes the client "
    "certificate and key come from FMESH_CERT and FMESH_KEY.")]


def say_error(message: str) -> None:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)  # one line, as written


def fail(message: str, code: int = 1) -> NoReturn:
    say_error(message)
    raise typer.Exit(code)


USAGE_EXIT = 2  # what click exits with for a usage error: scripts tell "you called it wrong" from "it failed"


def usage_error(message: str) -> NoReturn:
    """What was given is wrong (`--log-level loud`, a manifest that does not validate): one line, exit 2,
    nothing done."""
    fail(message, USAGE_EXIT)


def client(mesh: str, token: str | None, ca: Path | None = None):  # type: ignore[no-untyped-def]
    from fmesh.deploy.client import MeshClient
    from fmesh.tls import cli_context

    sent, source = find_token(token)
    return MeshClient(mesh, sent, verify=cli_context(ca), token_source=source)


def ask(mesh: str, token: str | None, ca: Path | None, question: Callable[[Any], T]) -> T:
    """What `question` gets from the mesh's client; an error on the way ends the command (exit 1)."""
    try:
        with client(mesh, token, ca) as mesh_client:
            return question(mesh_client)
    except FmeshError as exc:
        fail(str(exc))


class OneLineErrors(TyperGroup):
    """The root command: a usage error is one line, like every other error of the CLI, and
    nothing reaches the user as a traceback (FMESH_TRACEBACK=1 shows one for a bug)."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as exc:
            exc.show()  # the help text, as asked for by giving nothing
            sys.exit(exc.exit_code)
        except UsageError as exc:
            command = exc.ctx.command_path if exc.ctx is not None else "fmesh"
            say_error(f"{exc.format_message()} (`{command} --help` shows how)")
            sys.exit(exc.exit_code)
        except ClickException as exc:
            say_error(exc.format_message())
            sys.exit(exc.exit_code)
        except typer.Abort:
            say_error("aborted")
            sys.exit(130)
        except Exception as exc:
            if os.environ.get("FMESH_TRACEBACK"):
                raise
            say_error(f"fmesh failed unexpectedly ({type(exc).__name__}: {exc}); this is a bug, please report "
                      "it (FMESH_TRACEBACK=1 shows where)")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)
