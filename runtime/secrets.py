"""Secrets reach functions as environment variables, read from the mesh's environment or
from files when a replica starts. Only their names are stored, shown or logged."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fmesh.errors import HandlerError


@dataclass(frozen=True)
class SecretSource:
    """Where a secret's value comes from: a mesh environment variable or a file."""

    env: str | None = None
    file: str | None = None


def resolve_secrets(sources: dict[str, SecretSource]) -> dict[str, str]:
    """{name: value}; a HandlerError names the secret (never its value) if one is missing."""
    values = {}
    for name, source in sources.items():
        if source.file:
            try:
                values[name] = Path(source.file).read_text().rstrip("\n")
            except OSError as exc:
                raise HandlerError(f"secret {name}: cannot read {source.file}: {exc.strerror}", status=500) from exc
        else:
            variable = source.env or name
            if variable not in os.environ:
                raise HandlerError(f"secret {name}: the mesh has no environment variable {variable}", status=500)
            values[name] = os.environ[variable]
    return values
