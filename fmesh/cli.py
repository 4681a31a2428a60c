"""The `fmesh` command line."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from fmesh import cli_shared
from fmesh.cli_get import delete, get
from fmesh.cli_new import invoke, new
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
from fmesh.cli_status import status
from fmesh.cli_trail import events_app, trace
from fmesh.cli_version import main_options
from fmesh.errors import FmeshError
from fmesh.settings import DEFAULT_MESH_URL, DEFAULT_PORT, default_data_dir, find_token
from fmesh.wording import noun, plural

app = typer.Typer(help="fmesh: event-driven functions that scale to zero, no cluster required.",
                  no_args_is_help=True, pretty_exceptions_enable=False, cls=cli_shared.OneLineErrors)
app.command()(trace)
app.add_typer(events_app, name="events")
# type/subtype, then any parameters (RFC 9110 section 8.3.1): what the mesh sends on as Content-Type
TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
MEDIA_TYPE = re.compile(rf"{TOKEN}/{TOKEN}(\s*;.*)?", re.ASCII)
LogFormatOption = Annotated[str, typer.Option(
    envvar="FMESH_LOG_FORMAT", help="The mesh's own log lines: text (readable on a terminal) or json (one object "
    "a line, with the event id and function as keys).")]
LogLevelOption = Annotated[str, typer.Option(envvar="FMESH_LOG_LEVEL", help="debug, info, warning or error.")]


OtlpOption = Annotated[str | None, typer.Option(
    help="Export a span per hop (ingress, delivery attempt, reply) over OTLP/HTTP to this OpenTelemetry "
         "collector, Jaeger or Tempo, e.g. http://127.0.0.1:4318 (/v1/traces is added). Default: off.")]

@app.command()
def up(
    file: Annotated[Path | None, typer.Option("-f", "--file", help="Deploy this manifest at start.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for events (POST /) and the control API (/v1).",
                                      min=1, max=65535)] = DEFAULT_PORT,
    data_dir: Annotated[Path | None, typer.Option(
        help="Where the mesh keeps its state (default: ~/.fmesh).")] = None,
    store: Annotated[str | None, typer.Option(
        help="Where events and state live: sqlite:///path, memory://, or nats://host:4222[,host:4222] for many "
             "nodes on NATS JetStream (default: sqlite in the data dir).")] = None,
    cluster: Annotated[str | None, typer.Option(
        help="With a nats:// store: the mesh's name there (streams and buckets are named after it; default fmesh). "
             "Nodes with the same store and cluster are one mesh.")] = None,
    token: Annotated[str | None, typer.Option(
        envvar="FMESH_TOKEN", help="Control API token (default: generated into <data dir>/token).")] = None,
    max_event_bytes: Annotated[int, typer.Option(
        min=1, help="Largest event accepted, body and ce-* headers together (413 past it).")] = 1024 * 1024,
    max_header_bytes: Annotated[int, typer.Option(
        min=1024, help="Largest header section of a request (431 past it).")] = 64 * 1024,
    max_headers: Annotated[int, typer.Option(min=8, help="Most headers in a request (431 past it).")] = 100,
    max_extensions: Annotated[int, typer.Option(
        min=0, help="Most extension attributes on an event (413 past it).")] = 64,
    max_bundle_bytes: Annotated[int, typer.Option(
        min=1, help="Most bytes a function's uploaded code may unpack to (400 past it).")] = 256 * 1024 * 1024,
    max_bundle_files: Annotated[int, typer.Option(
        min=1, help="Most files in a function's uploaded code (400 past it).")] = 20_000,
    bundle_grace: Annotated[str, typer.Option(
        help="Function code that no deployed version uses (on any node, old versions finishing their events "
             "included) is removed after this long; also how long an upload waits for its deploy.")] = "10m",
    max_backlog: Annotated[int, typer.Option(
        min=0, help="Events waiting for one function or sink at most: past it, publishing events routed there "
                    "gets 503 with Retry-After (triggers pause) until it catches up; 0: no bound.")] = 100_000,
    ingress_workers: Annotated[int, typer.Option(
        min=0, envvar="FMESH_INGRESS_WORKERS",
        help="Processes that serve the port beside the mesh's own, reading and parsing events on other cores "
             "(the mesh stores, routes and delivers them); 0: the mesh process serves HTTP itself.")] = 0,
    launcher: Annotated[str, typer.Option(help="How replicas start: zygote (fast) or subprocess.")] = "zygote",
    template_idle: Annotated[str, typer.Option(
        help="A function's template (its handler loaded once, its replicas forked from it) goes after this "
             "long without a replica; the next cold start loads the handler again. 0 turns templates off.")] = "5m",
    zygote_idle: Annotated[str, typer.Option(
        help="The zygote (the warm process replicas are forked from) stops after this long with no replica "
             "and no template, giving its memory back; the next cold start starts it again (about the time "
             "of a fresh interpreter). 0 keeps it.")] = "5m",
    dead_letter_retention: Annotated[str, typer.Option(help="How long dead letters are kept.")] = "7d",
    trail_retention: Annotated[str, typer.Option(
        help="How long the event trail (fmesh trace, fmesh events) keeps where each event went; 0 turns "
             "the trail off.")] = "24h",
    trail_max_events: Annotated[int, typer.Option(
        min=0, help="Events the trail keeps at most, the oldest going first; 0 turns the trail off.")] = 100_000,
    mesh_id: Annotated[str | None, typer.Option(
        help="This mesh's id, which bridges put on the path of the events it forwards "
             "(default: one generated once and kept in the data dir).")] = None,
    dedup_window: Annotated[str, typer.Option(
        help="Bridged events with the same source and id within this window are dropped as duplicates.")] = "10m",
    shutdown_grace: Annotated[str, typer.Option(
        help="How long SIGTERM or Ctrl-C may take; unfinished deliveries stay stored.")] = "10s",
    ingress_auth: Annotated[str | None, typer.Option(
        help="Who may publish to POST /: required (401 without a token, signature or peer certificate), "
             "optional, or off (default: off on a loopback --host, else required).")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="Serve HTTPS with this certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="The private key (PEM) of --tls-cert.")] = None,
    tls_client_ca: Annotated[Path | None, typer.Option(
        help="Require client certificates signed by this CA (mTLS); peers can be known by their subject.")] = None,
    header_timeout: Annotated[str, typer.Option(
        help="A client must send a request's headers within this long of connecting (or of the request's "
             "first byte): 408 and closed past it.")] = "10s",
    body_timeout: Annotated[str, typer.Option(
        help="A request body may pause at most this long, and past it must average --min-body-rate: 408 "
             "and closed otherwise.")] = "10s",
    min_body_rate: Annotated[int, typer.Option(
        help="Bytes/s a request body must average once --body-timeout has passed (0: only the pause counts).")
    ] = 4096,
    keepalive_timeout: Annotated[str, typer.Option(
        help="An idle connection between two requests is closed after this long.")] = "5s",
    max_connections: Annotated[int | None, typer.Option(
        help="Open client connections at most; past it a new one takes the place of the one idle the longest, "
             "or gets 503 (default: the soft fd limit less a reserve for the mesh's own files, at most 10000).")
    ] = None,
    public_metrics: Annotated[bool | None, typer.Option(
        "--public-metrics/--no-public-metrics",
        help="Serve /metrics, /openapi.json and /docs without a token (default: on a loopback --host only; "
             "elsewhere they need a read or admin token).")] = None,
    otlp_endpoint: OtlpOption = None,
    log_format: LogFormatOption = "text",
    log_level: LogLevelOption = "info",
) -> None:
    """Run a mesh node in the foreground (no external services needed)."""
    from fmesh.deploy.manifest import load_manifest
    from fmesh.deploy.server import exec_server
    from fmesh.settings import NodeSettings

    given = {"bundle_grace": bundle_grace, "template_idle": template_idle, "zygote_idle": zygote_idle,
             "dead_letter_retention": dead_letter_retention, "trail_retention": trail_retention,
             "shutdown_grace": shutdown_grace, "dedup_window": dedup_window, "header_timeout": header_timeout,
             "body_timeout": body_timeout, "keepalive_timeout": keepalive_timeout}
    durations = {option: _duration(text, option) for option, text in given.items()}
    settings = NodeSettings(data_dir=(data_dir or default_data_dir()).expanduser().resolve(), host=host,
                            port=port, store=_with_cluster(store, cluster), token=token,
                            max_event_bytes=max_event_bytes, max_header_bytes=max_header_bytes,
                            max_headers=max_headers, max_extensions=max_extensions,
                            max_bundle_bytes=max_bundle_bytes, max_bundle_files=max_bundle_files, launcher=launcher,
                            max_backlog=max_backlog, ingress_workers=ingress_workers,
                            trail_max_events=trail_max_events, ingress_auth=ingress_auth,
                            tls_cert=_absolute(tls_cert), tls_key=_absolute(tls_key),
                            tls_client_ca=_absolute(tls_client_ca), mesh_id=mesh_id,
                            min_body_rate=min_body_rate, max_connections=max_connections,
                            public_metrics=public_metrics, otlp_endpoint=otlp_endpoint,
                            log_format=log_format, log_level=log_level, **durations)
    _check_logging(settings)
    if launcher not in ("zygote", "subprocess"):
        usage_error(f"--launcher must be zygote or subprocess, not {launcher!r}")
    if ingress_auth not in (None, "required", "optional", "off"):
        usage_error(f"--ingress-auth must be required, optional or off, not {ingress_auth!r}")
    if settings.shutdown_grace <= 0:
        usage_error("--shutdown-grace must be more than 0s, e.g. 10s")
    if settings.bundle_grace <= 0:
        usage_error("--bundle-grace must be more than 0s, e.g. 10m: a deploy uploads its code before it applies")
    _check_client_limits(settings)
    _check_store(settings)
    if otlp_endpoint is not None:
        _check_otlp_endpoint(otlp_endpoint)
    if mesh_id is not None:
        from fmesh.meshpath import check_mesh_id

        try:
            check_mesh_id(mesh_id)
        except ValueError as exc:
            usage_error(f"--mesh-id: {exc}")
    if file is not None:
        try:
            load_manifest(file)  # a bad manifest is refused here, with the CLI's error style
        except FmeshError as exc:
            usage_error(str(exc))
    exec_server(settings, file.resolve() if file else None)


@app.command()
def deploy(file: ManifestOption = Path("fmesh.yaml"), mesh: MeshOption = DEFAULT_MESH_URL,
           token: TokenOption = None, ca: CaOption = None,
           prune: Annotated[bool, typer.Option(help="Delete deployed functions missing from the manifest.")] = False,
           verify: Annotated[bool, typer.Option(
               help="Start each new or changed function once before it takes events; if one does not start, "
                    "nothing is deployed.")] = True,
           ) -> None:
    """Validate a manifest, upload each function's code, and apply it to the mesh."""
    from fmesh.deploy.deployer import apply_request, pack_functions, size_warning, summarize
    from fmesh.deploy.manifest import check_references, load_manifest

    try:
        manifest = load_manifest(file)
    except FmeshError as exc:
        usage_error(str(exc))
    console.print(f"Deploying [bold]{file}[/] to {mesh}")
    try:
        with client(mesh, token, ca) as mesh_client, console.status("validating") as status:
            deployed = set() if prune else mesh_client.target_names()
            try:
                check_references(manifest, file, deployed)
            except FmeshError as exc:
                usage_error(str(exc))
            progress = _StatusProgress(status)
            packed = pack_functions(manifest, file, progress)
            for function in packed:
                if (warning := size_warning(function)) is not None:
                    errors.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
                if mesh_client.has_bundle(function.digest):
                    console.print(f"  code of {function.name} already on the mesh ({function.digest[:12]})")
                    continue
                what = f"{plural(function.files, 'file')}, {plural(len(function.data), 'byte')}"
                progress.step(f"uploading {function.name} ({what})")
                mesh_client.put_bundle(function.digest, function.data)
                console.print(f"  uploaded {function.name}: {what}")
            for function in packed:
                if function.has_requirements:
                    _install_requirements(mesh_client, function, progress)
            progress.step("starting new versions once, then applying" if verify else "applying")
            applied = mesh_client.apply(apply_request(manifest, packed, file.parent.resolve()), prune, verify)
    except FmeshError as exc:
        fail(str(exc))
    changes = applied["changes"]
    for change in changes:
        colour = {"created": "green", "updated": "yellow", "deleted": "red"}.get(change["action"], "dim")
        version = f" (version {change['version']})" if change.get("version") else ""
        console.print(f"  {change['kind']} [bold]{change['name']}[/] [{colour}]{change['action']}[/]{version}")
    console.print(f"[bold green]Done:[/] {summarize(changes)}.")
    for warning in applied.get("warnings", []):
        errors.print(f"[bold yellow]warning:[/] {warning}", highlight=False)


@app.command()
def sidecar(
    function: Annotated[str, typer.Option(help="The external function (`external: true`) to deliver.")],
    target: Annotated[str, typer.Option(help="Where it serves CloudEvents over HTTP, e.g. http://127.0.0.1:8080/.")],
    store: Annotated[str, typer.Option(help="The store the mesh nodes share, e.g. nats://127.0.0.1:4222.")],
    cluster: Annotated[str | None, typer.Option(help="The nodes' --cluster, if they were given one.")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        help="The sidecar's own folder (default: <~/.fmesh>/sidecars/FUNCTION).")] = None,
    otlp_endpoint: OtlpOption = None,
    log_format: LogFormatOption = "text",
    log_level: LogLevelOption = "info",
) -> None:
    """Deliver an external function's events (any language, any host), like a Dapr sidecar."""
    import asyncio
    from urllib.parse import urlsplit

    from fmesh.deploy.sidecar import data_dir_for, run_sidecar
    from fmesh.names import is_name
    from fmesh.settings import NodeSettings

    if not is_name(function):
        usage_error(f"--function: {function!r} is not a function name (lowercase letters, digits and '-')")
    if urlsplit(target).scheme not in ("http", "https") or not urlsplit(target).netloc:
        usage_error(f"--target must be an http:// or https:// URL, not {target!r}")
    folder = (data_dir or data_dir_for(function, default_data_dir())).expanduser().resolve()
    settings = NodeSettings(data_dir=folder, store=_with_cluster(store, cluster), port=0, otlp_endpoint=otlp_endpoint,
                            log_format=log_format, log_level=log_level)
    _check_logging(settings)
    _check_store(settings)
    if otlp_endpoint is not None:
        _check_otlp_endpoint(otlp_endpoint)
    from fmesh import meshlog

    meshlog.configure(settings.log_format, settings.log_level)
    from fmesh.permissions import keep_files_private

    keep_files_private()  # the sidecar's files are its user's only, as the mesh's (see fmesh up)
    raise typer.Exit(asyncio.run(run_sidecar(function, target, settings)))


def _with_cluster(store: str | None, cluster: str | None) -> str | None:
    """The store URL with `cluster=` added to its options (a nats:// store's only)."""
    if cluster is None:
        return store
    if store is None or not store.startswith(("nats://", "tls://")):
        usage_error("--cluster goes with a nats:// store (--store nats://host:4222): other stores hold one mesh only")
    if "cluster=" in store.partition("?")[2]:
        usage_error("--cluster is given twice: once as the option and once in the --store URL; keep one")
    return f"{store}{'&' if '?' in store else '?'}cluster={cluster}"


def _check_client_limits(settings: Any) -> None:
    for flag in ("header_timeout", "body_timeout", "keepalive_timeout"):
        if getattr(settings, flag) <= 0:
            usage_error(f"--{flag.replace('_', '-')} must be more than 0s, e.g. 10s")
    if settings.min_body_rate < 0:
        usage_error(f"--min-body-rate must be 0 or more bytes/s, not {settings.min_body_rate}")
    if settings.max_connections is not None and settings.max_connections < 1:
        usage_error(f"--max-connections must be 1 or more, not {settings.max_connections}")


def _check_logging(settings: Any) -> None:
    from fmesh.meshlog import FORMATS, LEVELS

    if settings.log_format not in FORMATS:
        usage_error(f"--log-format must be text or json, not {settings.log_format!r}")
    if settings.log_level not in LEVELS:
        usage_error(f"--log-level must be debug, info, warning or error, not {settings.log_level!r}")


def _check_store(settings: Any) -> None:
    from fmesh.broker.stores import open_store

    try:
        open_store(settings.store_url, settings.data_dir)  # only parses the URL: nothing is opened
    except ValueError as exc:
        usage_error(f"--store: {exc}")


def _check_otlp_endpoint(endpoint: str) -> None:
    from fmesh.deploy.otel import traces_url

    try:
        traces_url(endpoint)
    except ValueError as exc:
        usage_error(f"--otlp-endpoint: {exc}")


def _absolute(path: Path | None) -> str | None:
    return str(path.expanduser().resolve()) if path is not None else None


def _duration(text: str, option: str) -> float:
    """`text` as seconds; a one-line error naming the option (`--bundle-grace`) if it is no duration."""
    from fmesh.durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        usage_error(f"--{option.replace('_', '-')}: {exc}")


def _install_requirements(mesh_client: Any, function: Any, progress: Any) -> None:
    progress.step(f"installing requirements of {function.name}")
    installed = False
    for line in mesh_client.prepare(function.digest):
        installed = True
        progress.step(f"{function.name}: {line[:100]}")
    console.print(f"  requirements of {function.name} " + ("installed" if installed else "already installed"))


class _StatusProgress:
    def __init__(self, status: Any) -> None:
        self.status = status

    def step(self, text: str) -> None:
        self.status.update(text)


@app.command()
def send(
    type: Annotated[str, typer.Option("--type", help="Event type.")],
    source: Annotated[str, typer.Option("--source", help="Event source.")],
    data: Annotated[str | None, typer.Option(
        help="JSON data, or @file to send a file's JSON (not JSON: an error; see --data-text).")] = None,
    data_text: Annotated[str | None, typer.Option(
        help="Text data (or @file) sent as text/plain, as it is.")] = None,
    subject: Annotated[str | None, typer.Option(help="Event subject.")] = None,
    ext: Annotated[list[str] | None, typer.Option(help="An extension as key=value (repeatable).")] = None,
    id: Annotated[str | None, typer.Option("--id", help="Event id (default: a new UUID).")] = None,
    content_type: Annotated[str | None, typer.Option(
        help="datacontenttype; with it --data is sent as it is, JSON or not (default: application/json).")] = None,
    structured: Annotated[bool, typer.Option(help="Send in structured mode instead of binary.")] = False,
    mesh: MeshOption = DEFAULT_MESH_URL,
    token: Annotated[str | None, typer.Option(
        "--token", help="Token to publish with (fmesh tokens create NAME --scope publish; default: FMESH_TOKEN, "
        "else <data dir>/token).")] = None,
    ca: CaOption = None,
) -> None:
    """Send one CloudEvent to the mesh; prints its id and the HTTP status."""
    from fmesh.sender import build_event, post_event
    from fmesh.tls import cli_context

    if data is not None and data_text is not None:
        usage_error("give --data (JSON) or --data-text (text), not both")
    if content_type is not None and not MEDIA_TYPE.fullmatch(content_type):
        usage_error(f"--content-type must be a media type such as text/plain or application/xml, not {content_type!r}")
    try:
        sent, token_source = _publish_token(mesh, token)
        extensions = dict(_key_value(item) for item in ext or [])
        event = build_event(type, source, data if data_text is None else data_text, subject, extensions, id,
                            content_type, text=data_text is not None)
        status, body = post_event(mesh, event, structured, sent, cli_context(ca))
    except FmeshError as exc:
        fail(str(exc))
    reason = body.get("error") if isinstance(body, dict) else None
    console.print(f"{event.id} {status}{' ' + reason if reason else ''}", highlight=False)
    if status in (401, 403):  # the line above for scripts, this one for the person: which token, and what to do
        fail(f"{mesh} answered {status}: it refused {token_source}; pass another with --token TOKEN or "
             "FMESH_TOKEN=TOKEN (`fmesh tokens create NAME --scope publish` makes one)")
    if not 200 <= status < 300:
        raise typer.Exit(1)


def _publish_token(mesh: str, given: str | None) -> tuple[str | None, str]:
    """--token or FMESH_TOKEN as given; the data dir's own token only to a mesh on this
    machine: `send` to another mesh must not hand it this mesh's admin token. And where
    the token came from."""
    import ipaddress
    from urllib.parse import urlsplit

    if given or os.environ.get("FMESH_TOKEN"):
        return find_token(given)
    host = urlsplit(mesh).hostname or ""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    return find_token(None) if local else (None, f"no token (none is sent to {host} unless given)")


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        usage_error(f"--ext takes key=value, got {item!r}")
    return key, value


app.command()(status)


def _plain(text: str | None) -> Any:
    """A table cell of text from outside (an event, a handler's error, a server's answer):
    not rich markup (a "[/x]" in it would stop the command), no terminal control characters."""
    from rich.text import Text

    from fmesh.terminal import escape_controls

    return Text(escape_controls(text or ""))


def _ago(timestamp: float) -> str:
    import time

    return f"{max(0.0, time.time() - timestamp):.0f}s ago"


@app.command()
def logs(function: Annotated[str, typer.Argument(help="The function.")],
         follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing new lines.")] = False,
         lines: Annotated[int, typer.Option("-n", "--lines", help="How many past lines.")] = 200,
         raw: Annotated[bool, typer.Option(
             "--raw", help="Print the output as the functions wrote it, terminal escape sequences included "
             "(by default they are shown as text, e.g. \\x1b).")] = False,
         mesh: MeshOption = DEFAULT_MESH_URL, token: TokenOption = None, ca: CaOption = None) -> None:
    """A function's stdout and stderr, each line tagged with its replica."""
    from fmesh.terminal import escape_controls

    shown = (lambda text: text) if raw else escape_controls  # function output must not drive our terminal
    try:
        with client(mesh, token, ca) as mesh_client:
            if not follow:
                sys.stdout.write(shown(mesh_client.logs(function, lines)))
                return
            for line in mesh_client.follow_logs(function, lines):
                print(shown(line), flush=True)
    except FmeshError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass


@app.command("dead-letters")
def dead_letters(
    function: Annotated[list[str] | None, typer.Argument(
        metavar="[FUNCTION]", help="Only this function's dead letters (after --replay: more ids to replay).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    replay: Annotated[list[int] | None, typer.Option(
        "--replay", help="Deliver these dead letters again: --replay 1 2 3, or --replay 1 --replay 2.")] = None,
    replay_all: Annotated[str | None, typer.Option(
        "--replay-all", help="Deliver all of this function's dead letters again.")] = None,
    purge: Annotated[bool, typer.Option("--purge", help="Delete the dead letters (of FUNCTION, else all).")] = False,
    mesh: MeshOption = DEFAULT_MESH_URL, token: TokenOption = None, ca: CaOption = None,
) -> None:
    """List events that exhausted their delivery policy, replay them, or purge them."""
    replay, name = _replay_ids(replay, function or [])
    try:
        with client(mesh, token, ca) as mesh_client:
            if replay or replay_all:
                result = mesh_client.replay_dead_letters(replay or [], replay_all)
                if result["replayed"] or not (result.get("not_routed") or result["not_found"]):
                    console.print(f"replayed {plural(result['replayed'], 'dead letter')}")  # not "0" beside an error
                if result.get("not_routed"):
                    kept = result["not_routed"]
                    fail(f"{noun(len(kept), 'dead letter')} {', '.join(map(str, kept))} kept: their subscription "
                         "is gone and no deployed filter matches them now")
                if result["not_found"]:
                    fail(f"no dead letter with id {', '.join(map(str, result['not_found']))}")
                return
            if purge:
                console.print(f"purged {plural(mesh_client.purge_dead_letters(name), 'dead letter')}")
                return
            letters = mesh_client.dead_letters(name)
            if name is not None and ":" not in name and not letters and name not in mesh_client.target_names():
                fail(f"there is no function {name!r} on {mesh}, and no dead letters of one: `fmesh status` "
                     "lists the functions")
    except FmeshError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps({"dead_letters": letters}, indent=2))
        return
    table = Table("id", "subscription", "event", "attempts", "status", "reason", "last error")
    for d in letters:
        attributes = d["event"]["attributes"]
        table.add_row(str(d["id"]), d["subscription"], _plain(f"{attributes['type']} {attributes['id']}"),
                      str(d["attempts"]), str(d["status"] or "-"), _plain(d["reason"]), _plain((d["error"] or "")[:80]))
    console.print(table if letters else "No dead letters.")


def _replay_ids(replay: list[int] | None, rest: list[str]) -> tuple[list[int] | None, str | None]:
    """--replay's ids, with the numbers after them (`--replay 1 2 3`), and the FUNCTION if one."""
    if not replay:
        if len(rest) > 1:
            usage_error(f"one FUNCTION at most, got {' '.join(rest)}")
        return None, rest[0] if rest else None
    for item in rest:
        if not item.isdigit():
            usage_error(f"--replay takes dead-letter ids, and {item!r} is not one "
                       f"(its dead letters: --replay-all {item})")
    return [*replay, *map(int, rest)], None


tokens_app = typer.Typer(help="Tokens that may publish (POST /), read (GET /v1/...) or administer the mesh.",
                         no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(help="The token's name; events it publishes say fmeshsender token:NAME.")],
    scope: Annotated[str, typer.Option(help="publish (POST / only), read (list and watch) or admin.")] = "publish",
    allow: Annotated[str | None, typer.Option(
        help="What it may publish, a filter as in a subscription, in YAML: '{type: {prefix: com.ci.}}'.")] = None,
    rate: Annotated[str | None, typer.Option(help="Rate limit of what it publishes: 100/s, 600/m.")] = None,
    burst: Annotated[int | None, typer.Option(help="Events at once within --rate (default: one second's).")] = None,
    mesh: MeshOption = DEFAULT_MESH_URL, token: TokenOption = None, ca: CaOption = None,
) -> None:
    """Make a token and print it, once: the mesh keeps only its hash."""
    import yaml

    try:
        rule = yaml.safe_load(allow) if allow is not None else None
    except yaml.YAMLError as exc:
        usage_error(f"--allow is not YAML: {exc}")
    if rule is not None and not isinstance(rule, dict):
        usage_error("--allow takes a filter mapping such as '{type: {prefix: com.ci.}}'")
    try:
        with client(mesh, token, ca) as mesh_client:
            made = mesh_client.create_token(name, scope, rule, rate, burst)
    except FmeshError as exc:
        fail(str(exc))
    errors.print(f"token [bold]{made['name']}[/] (scope {made['scope']}) created; it is shown only now:",
                 highlight=False)
    print(made["token"], flush=True)


@tokens_app.command("list")
def tokens_list(mesh: MeshOption = DEFAULT_MESH_URL, token: TokenOption = None, ca: CaOption = None,
                as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The mesh's tokens: names, scopes and rules (never the tokens)."""
    try:
        with client(mesh, token, ca) as mesh_client:
            tokens = mesh_client.tokens()
    except FmeshError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps({"tokens": tokens}, indent=2))
        return
    table = Table("name", "scope", "allow", "rate", "created")
    for t in tokens:
        rate = f"{t['rate']:g}/s, burst {t['burst']}" if t.get("rate") else "-"
        table.add_row(t["name"], t["scope"], json.dumps(t["allow"]) if t.get("allow") else "-", rate,
                      _ago(t["created_at"]))
    console.print(table if tokens else "No tokens. Make one with `fmesh tokens create NAME --scope publish`.")


@tokens_app.command("revoke")
def tokens_revoke(name: Annotated[str, typer.Argument(help="The token.")],
                  mesh: MeshOption = DEFAULT_MESH_URL, token: TokenOption = None, ca: CaOption = None) -> None:
    """Revoke a token: requests with it are refused from now on."""
    try:
        with client(mesh, token, ca) as mesh_client:
            mesh_client.revoke_token(name)
    except FmeshError as exc:
        fail(str(exc))
    console.print(f"token [bold]{name}[/] revoked")


app.callback()(main_options)
for command in (new, invoke, get, delete):
    app.command()(command)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":
    main()
