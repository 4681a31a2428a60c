"""`fmesh --version`: the installed package's version, from its metadata."""

from __future__ import annotations

from typing import Annotated

import typer


def _print_version(wanted: bool) -> None:
    if wanted:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"fmesh {version('fmesh')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            print("fmesh (version unknown: not installed as a package)")
        raise typer.Exit()


def main_options(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print fmesh's version and exit.")] = False) -> None:
    pass
