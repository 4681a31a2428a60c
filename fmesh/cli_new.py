"""`fmesh new` (a function to start from) and `fmesh invoke` (one event straight to a function)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fmesh.cli_shared import (
    CaOption,
    ManifestOption,
    MeshOption,
    TokenOption,
    client,
    console,
    errors,
    fail,
    usage_error,
)
from fmesh.errors import FmeshError
from fmesh.names import NAME_RULE, is_name
from fmesh.settings import DEFAULT_MESH_URL

if TYPE_CHECKING:
    from fmesh.events import Event


def new(name: Annotated[str, typer.Argument(help="The function's name.")],
        lang: Annotated[str, typer.Option(help="python (a handler), node (a Node.js program) or command "
                                               "(any program serving CloudEvents over HTTP on $PORT).")] = "python",
        file: ManifestOption = Path("fmesh.yaml")) -> None:
    """Start a function: its folder (code, README line, pytest test) and its manifest entry.

    The folder is functions/NAME beside the manifest, which is made if there is none; what
    else the manifest says stays as written. `fmesh deploy` runs it as it is."""
    from fmesh.deploy.manifest_edit import add_function
    from fmesh.deploy.scaffold import LANGUAGES, scaffold

    if not is_name(name):
        usage_error(f"{name!r} is not a function name: use {NAME_RULE}")
    if lang not in LANGUAGES:
        usage_error(f"--lang must be one of {', '.join(LANGUAGES)}, not {lang!r}")
    relative = f"functions/{name}"
    folder = file.parent / relative
    if folder.exists():
        fail(f"{folder} exists already: choose another name, or move it away first")
    made = scaffold(name, lang, relative)
    try:
        text = file.read_text(encoding="utf-8") if file.exists() else ""
        manifest = add_function(text, name, made.entry, str(file))
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {file}: {exc}")
    except FmeshError as exc:
        fail(str(exc).splitlines()[0])
    folder.mkdir(parents=True)
    for part, content in made.files.items():
        (folder / part).write_text(content, encoding="utf-8")
    file.write_text(manifest, encoding="utf-8")
    console.print(f"created {folder}/ ({', '.join(made.files)}) and added [bold]{name}[/] to {file}", highlight=False)
    console.print(f"next: fmesh deploy{'' if file == Path('fmesh.yaml') else f' -f {file}'}, then "
                  f"fmesh invoke {name} --data '{{\"name\": \"you\"}}'", highlight=False, markup=False)
    if lang == "node" and shutil.which("node") is None:
        errors.print("[bold yellow]warning:[/] node is not on PATH here; the mesh's machine needs it", highlight=False)


def invoke(name: Annotated[str, typer.Argument(help="The function.")],
           data: Annotated[str | None, typer.Option(help="JSON data, or @file to send a file's contents.")] = None,
           type: Annotated[str, typer.Option("--type", help="Event type.")] = "dev.fmesh.invoke",
           source: Annotated[str, typer.Option("--source", help="Event source.")] = "/fmesh/cli/invoke",
           whole: Annotated[bool, typer.Option("--event", help="Print the whole reply event (JSON), not "
                                                          "only its data.")] = False,
           mesh: MeshOption = DEFAULT_MESH_URL, token: TokenOption = None, ca: CaOption = None) -> None:
    """Send one event straight to a function and print its reply's data.

    The event goes past the filters, as one attempt (a replica started if none runs, the
    function's timeout, no retries); neither it nor the reply is stored or routed."""
    from fmesh.bindings.http import write_structured
    from fmesh.sender import build_event

    if data is not None and not data.startswith("@"):
        try:
            json.loads(data)
        except ValueError as exc:
            usage_error(f"--data is not JSON ({exc}); quote text as a JSON string, or send a file with @file")
    try:
        event = build_event(type, source, data)
        with client(mesh, token, ca) as mesh_client:
            reply = mesh_client.invoke(name, event)
    except FmeshError as exc:
        fail(str(exc))
    if reply is None:
        errors.print(f"{name} returned no reply", highlight=False)
    elif whole:
        print(json.dumps(json.loads(write_structured(reply)[1]), indent=2))
    else:
        print(_data_text(reply))


def _data_text(reply: Event) -> str:
    """The reply's data: JSON indented, text as it is, bytes (which a terminal cannot show) summed up."""
    from fmesh.events import is_json_content_type
    from fmesh.terminal import escape_controls

    content_type = reply.attributes.get("datacontenttype")
    if reply.payload is None:
        return ""
    if is_json_content_type(content_type):
        return json.dumps(reply.data, indent=2)
    try:
        return escape_controls(reply.payload.decode("utf-8"))
    except UnicodeDecodeError:
        return f"({len(reply.payload)} bytes of {content_type or 'data'})"
