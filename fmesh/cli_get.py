"""`fmesh get` (what is deployed, as a table or as data) and `fmesh delete` (of any kind, or
all a manifest declares)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from fmesh.cli_shared import CaOption, MeshOption, TokenOption, client, console, fail, usage_error
from fmesh.errors import DeployError, FmeshError
from fmesh.settings import DEFAULT_MESH_URL
from fmesh.terminal import escape_controls

KINDS = ("function", "trigger", "subscription", "bridge", "peer")
# Deleting a manifest: what feeds others first, what others hand events to last.
DELETE_ORDER = ("trigger", "subscription", "function", "bridge", "peer")
OUTPUTS = ("yaml", "json")


def kind_of(word: str) -> str:
    """`functions` or `function` → function; anything else is refused, naming the kinds."""
    kind = word.lower().removesuffix("s")
    if kind not in KINDS:
        usage_error(f"unknown kind {word!r}: expected one of {', '.join(k + 's' for k in KINDS)}")
    return kind


def get(what: Annotated[str, typer.Argument(help="functions, triggers, subscriptions, bridges or peers.")],
        name: Annotated[str | None, typer.Argument(help="One of them: its spec as deployed, version and "
                                                        "status.")] = None,
        output: Annotated[str | None, typer.Option("-o", "--output", help="yaml or json (default: a table; "
                                                   "yaml for one).")] = None,
        mesh: MeshOption = DEFAULT_MESH_URL, token: TokenOption = None, ca: CaOption = None) -> None:
    """What is deployed: a table of a kind, or one resource as deployed, with its status."""
    kind = kind_of(what)
    if output is not None and output not in OUTPUTS:
        usage_error(f"-o must be yaml or json, not {output!r}")
    try:
        with client(mesh, token, ca) as mesh_client:
            found = [mesh_client.resource(kind, name)] if name is not None else mesh_client.resources(kind)
            report = mesh_client.status()
    except FmeshError as exc:
        fail(str(exc))
    items = [described(kind, r, report) for r in found]
    if name is not None:
        _print_data(items[0], output or "yaml")
    elif output is not None:
        _print_data({f"{kind}s": items}, output)
    elif not items:
        console.out(f"No {kind}s deployed.")
    else:
        console.out(columns([["NAME", "VERSION", *EXTRA_COLUMNS[kind], "STATUS"],
                             *(row(kind, item) for item in items)]), highlight=False)


def described(kind: str, resource: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """A resource as `get` shows it: kind, name, version, status, and its spec as deployed."""
    spec = {k: v for k, v in resource.items() if k not in ("name", "version", "bundle")}
    item = {"kind": kind, "name": resource["name"], "version": resource["version"],
            "status": status_of(kind, resource["name"], report), "spec": spec}
    if resource.get("bundle"):
        item["bundle"] = resource["bundle"]
    return item


def status_of(kind: str, name: str, report: dict[str, Any]) -> dict[str, Any]:
    """What /v1/status says of it on this node; `broken` when it could not run here."""
    broken = report.get("broken", {}).get(f"{kind}/{name}")
    if broken is not None:
        return {"state": "broken", "reason": broken}
    section, key = {"function": ("functions", name), "subscription": ("sinks", f"subscription:{name}"),
                    "bridge": ("bridges", name), "trigger": ("triggers", name)}.get(kind, ("", ""))
    found = next((s for s in report.get(section, []) if s["name"] == key), None)
    if found is None:
        return {"state": "external" if kind == "function" else "deployed"}
    return {"state": found.get("state", "running"), **{k: v for k, v in found.items() if k not in ("name", "version")}}


EXTRA_COLUMNS = {"function": ["RUNS", "ON"], "trigger": ["SOURCE"], "subscription": ["TO"], "bridge": ["TO"],
                 "peer": ["AUTH"]}


def row(kind: str, item: dict[str, Any]) -> list[str]:
    spec, status = item["spec"], item["status"]
    if kind == "function":
        runs = spec.get("handler") or " ".join(spec.get("command") or []) or "external"
        extra = [runs, ", ".join(json.dumps(on, separators=(",", ":")) for on in spec.get("on", [])) or "-"]
    elif kind == "trigger":
        extra = [next((k for k in spec if isinstance(spec[k], dict)), "-")]
    elif kind == "peer":
        extra = [", ".join(k for k, v in spec.get("auth", {}).items() if v is not None and k != "tolerance")]
    else:
        extra = [spec.get("to", "-")]
    return [item["name"], item["version"], *extra, summary(kind, status)]


def summary(kind: str, status: dict[str, Any]) -> str:
    """The STATUS column: the state, and the counts that say most about it."""
    state = status["state"]
    if state == "broken":
        return f"broken: {status['reason']}"
    if kind == "function" and "replicas" in status:
        text = f"{status['replicas']} replica{'s' * (status['replicas'] != 1)}, {status['pending']} pending"
    elif kind == "bridge":
        text = f"{state}, {status['backlog']} waiting"
    elif kind == "trigger":
        text = f"{state}, {status['events_in']} event{'s' * (status['events_in'] != 1)} in"
    elif "pending" in status:
        text = f"{status['delivered']} delivered, {status['pending']} pending"
    else:
        text = state
    return text + (f"; last error: {status['last_error']}" if status.get("last_error") else "")


def columns(rows: list[list[str]]) -> str:
    """Rows as plain text columns, each as wide as its widest cell (the last one not padded)."""
    cells = [[escape_controls(str(cell)).replace("\n", " ") for cell in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)) + "  " + r[-1]
                     for r in cells)


def _print_data(data: Any, output: str) -> None:
    if output == "json":
        print(json.dumps(data, indent=2))
        return
    import yaml

    print(yaml.safe_dump(data, sort_keys=False, allow_unicode=False, width=1000), end="")


def delete(what: Annotated[str | None, typer.Argument(help="The kind (function, trigger, subscription, bridge, "
                                                            "peer), or a function's name.")] = None,
           name: Annotated[str | None, typer.Argument(help="The name, after the kind.")] = None,
           file: Annotated[Path | None, typer.Option("-f", "--file", help="Delete what this manifest declares.")]
           = None,
           mesh: MeshOption = DEFAULT_MESH_URL, token: TokenOption = None, ca: CaOption = None) -> None:
    """Delete a function, a resource of any kind, or what a manifest declares.

    `fmesh delete NAME` (a function), `fmesh delete KIND NAME`, `fmesh delete -f fmesh.yaml`.
    Pending events go with what is deleted."""
    if file is not None:
        if what is not None:
            usage_error("give either -f FILE or KIND NAME, not both")
        targets = _declared(file)
    elif what is None:
        usage_error("name what to delete: fmesh delete KIND NAME, fmesh delete NAME (a function), or "
                    "fmesh delete -f fmesh.yaml")
    elif name is None:
        if what.lower().removesuffix("s") in KINDS:
            usage_error(f"name the {what.lower().removesuffix('s')} to delete: fmesh delete {what} NAME")
        targets = [("function", what)]
    else:
        targets = [(kind_of(what), name)]
    try:
        with client(mesh, token, ca) as mesh_client:
            if file is None:
                mesh_client.delete_resource(*targets[0])
                console.print(f"{targets[0][0]} [bold]{targets[0][1]}[/] deleted", highlight=False)
                return
            _delete_all(mesh_client, targets, file)
    except FmeshError as exc:
        fail(str(exc))


def _declared(file: Path) -> list[tuple[str, str]]:
    """(kind, name) of everything the manifest declares, in the order they can be deleted."""
    from fmesh.deploy.manifest import parse_manifest

    try:
        manifest = parse_manifest(file.read_text(encoding="utf-8"), str(file))
    except OSError as exc:
        usage_error(f"cannot read the manifest {file}: {exc.strerror}")
    except (UnicodeDecodeError, FmeshError) as exc:
        usage_error(str(exc).splitlines()[0])
    return [(kind, name) for kind in DELETE_ORDER for name in sorted(getattr(manifest, f"{kind}s"))]


def _delete_all(mesh_client: Any, targets: list[tuple[str, str]], file: Path) -> None:
    """Delete what is deployed of `targets`; one still named by another (a reply_to, a dead
    letter) goes after it, in another round."""
    deployed = {kind: {r["name"] for r in mesh_client.resources(kind)} for kind in {k for k, _ in targets}}
    pending = [(kind, name) for kind, name in targets if name in deployed[kind]]
    for kind, name in targets:
        if name not in deployed[kind]:
            console.print(f"  {kind} [bold]{name}[/] not deployed", highlight=False)
    deleted = 0
    while pending:
        refused: list[tuple[str, str, DeployError]] = []
        for kind, name in pending:
            try:
                mesh_client.delete_resource(kind, name)
            except DeployError as exc:
                refused.append((kind, name, exc))
                continue
            deleted += 1
            console.print(f"  {kind} [bold]{name}[/] [red]deleted[/]", highlight=False)
        if len(refused) == len(pending):
            raise refused[0][2]
        pending = [(kind, name) for kind, name, _ in refused]
    console.print(f"[bold green]Done:[/] {deleted} deleted of what {file} declares.", highlight=False)
