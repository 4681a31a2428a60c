"""`fmesh status`: the mesh at a glance in columns that fit the terminal (80 when piped),
everything with `--wide`, and the API's status document with `--json`."""

from __future__ import annotations

import json
import shutil
import time
from typing import Annotated, Any

import typer

from fmesh.cli_shared import CaOption, MeshOption, TokenOption, ask, errors
from fmesh.columns import Column, lines, shortened
from fmesh.settings import DEFAULT_MESH_URL
from fmesh.terminal import escape_controls
from fmesh.wording import plural

Row = dict[str, Any]


def status(mesh: MeshOption = DEFAULT_MESH_URL, token: TokenOption = None, ca: CaOption = None,
           wide: Annotated[bool, typer.Option("--wide", "-w", help="Every column, however wide.")] = False,
           as_json: Annotated[bool, typer.Option(
               "--json", help="The mesh's status document (GET /v1/status) as JSON, for scripts.")] = False) -> None:
    """Per function: replicas, pending, in flight, delivered, failed and dead-lettered; then
    subscriptions, bridges, triggers and nodes."""
    report = ask(mesh, token, ca, lambda mesh_client: mesh_client.status())
    if as_json:
        print(json.dumps(report, indent=2))
        return
    width = None if wide else shutil.get_terminal_size((80, 24)).columns
    for line in status_lines(report, width):
        print(line)
    for key, why in sorted(report.get("broken", {}).items()):
        errors.out(escape_controls(f"broken: {key.replace('/', ' ', 1)} could not start after a restart (its events "
                                   f"wait): {why}"), highlight=False)


def status_lines(report: dict[str, Any], width: int | None) -> list[str]:
    """What `fmesh status` prints, `width` columns wide at most (None: every column)."""
    out: list[str] = []
    functions = report.get("functions", [])
    if functions:
        out += lines(function_columns(functions), functions, width)  # their last errors: --wide, or fmesh logs
    else:
        out.append("No functions deployed. Deploy some with `fmesh deploy -f fmesh.yaml`.")
    for rows, columns in ((report.get("sinks", []), SINK_COLUMNS), (report.get("bridges", []), BRIDGE_COLUMNS),
                          (report.get("triggers", []), TRIGGER_COLUMNS)):
        if rows:
            out += ["", *lines(columns, rows, width), *_last_errors(rows, width)]
    out += _filter_errors([*functions, *report.get("sinks", [])], width)
    out += _elsewhere(report)
    nodes = report.get("nodes", [])
    if len(nodes) > 1:
        this = report.get("node")
        out += ["", *lines(NODE_COLUMNS, [{**n, "this": n["id"] == this} for n in nodes], width)]
        if report.get("totals"):
            out.append("replicas on all nodes: " + ", ".join(f"{k} {v}" for k, v in report["totals"].items()))
    if report.get("mesh"):
        out += ["", f"mesh {report['mesh']}", f"store {report['store']}"]  # a path, whole, however long
    return out


def function_columns(functions: list[Row]) -> list[Column]:
    """A filter-errors column only where some function has any (`--wide` always has it)."""
    any_filter_errors = any(f.get("filter_errors") for f in functions)
    return [
        Column("FUNCTION", lambda f: f["name"]),
        Column("REPLICAS", _replicas, keep=90, right=True),
        Column("READY", lambda f: f["ready"], wide=True, right=True),
        Column("DESIRED", lambda f: f["desired"], wide=True, right=True),
        Column("PENDING", lambda f: f["pending"], "PEND", keep=80, right=True),
        Column("IN FLIGHT", lambda f: f["inflight"], "INFL", keep=60, right=True),
        Column("WAITING", lambda f: f["waiting"], wide=True, right=True),
        Column("DELIVERED", lambda f: f["delivered"], "DONE", keep=65, right=True),
        Column("FAILED", lambda f: f["failed"], "FAIL", keep=70, right=True),
        Column("RETRIED", lambda f: f.get("retried"), wide=True, right=True),
        Column("DEAD", lambda f: f["dead_lettered"], keep=75, right=True),
        Column("REPLIES", lambda f: f.get("replies"), wide=True, right=True),
        Column("FILTER ERRORS", lambda f: f.get("filter_errors", 0), "FILTER ERR", keep=55, right=True,
               wide=not any_filter_errors),
        Column("OOM", lambda f: f["out_of_memory"], keep=10, right=True, wide=not any(
            f.get("out_of_memory") for f in functions)),
        Column("VERSION", lambda f: f["version"], "VER", keep=30),
        Column("RETIRING", lambda f: f.get("retiring_versions"), wide=True, right=True),
        Column("COLD START", _cold_start, "COLD", keep=20),
        Column("LATENCY P50/P99", _latency, wide=True),
        Column("LAST ERROR", lambda f: f.get("last_error"), wide=True),
    ]


def _replicas(f: Row) -> str:
    """Replicas, and how many of them are still starting."""
    return f"{f['replicas']}" + (f" ({f['starting']} starting)" if f.get("starting") else "")


def _cold_start(f: Row) -> str | None:
    if f.get("cold_start_last_ms") is None:
        return None
    return f"{f['cold_start_last_ms']:.0f}/{f['cold_start_median_ms']:.0f}ms"


def _latency(row: Row) -> str | None:
    latency = row.get("latency_ms")
    return None if not latency else f"{latency['p50']:.0f}/{latency['p99']:.0f}ms"


SINK_COLUMNS = [
    Column("SUBSCRIPTION", lambda s: s["name"].split(":", 1)[-1]),
    Column("TO", lambda s: s["url"], keep=40),
    Column("PENDING", lambda s: s["pending"], "PEND", keep=80, right=True),
    Column("IN FLIGHT", lambda s: s["inflight"], "INFL", keep=60, right=True),
    Column("DELIVERED", lambda s: s["delivered"], "DONE", keep=65, right=True),
    Column("FAILED", lambda s: s["failed"], "FAIL", keep=70, right=True),
    Column("RETRIED", lambda s: s.get("retried"), wide=True, right=True),
    Column("DEAD", lambda s: s["dead_lettered"], keep=75, right=True),
    Column("LATENCY P50/P99", _latency, wide=True),
    Column("LAST ERROR", lambda s: s.get("last_error"), wide=True),
]

BRIDGE_COLUMNS = [
    Column("BRIDGE", lambda b: b["name"]),
    Column("TO", lambda b: f"{b['url']} ({b['peer_mesh'] or '?'})", keep=40),
    Column("STATE", lambda b: b["state"], keep=90),
    Column("BACKLOG", lambda b: b["backlog"], "WAIT", keep=80, right=True),
    Column("OLDEST", lambda b: None if b["oldest_waiting_s"] is None else f"{b['oldest_waiting_s']:.0f}s",
           keep=50, right=True),
    Column("FORWARDED", lambda b: b["forwarded"], "FWD", keep=65, right=True),
    Column("LOOPED", lambda b: b["looped"], "LOOP", keep=30, right=True),
    Column("DEAD", lambda b: b["dead_lettered"], keep=75, right=True),
    Column("LAST ERROR", lambda b: b.get("last_error"), wide=True),
]

TRIGGER_COLUMNS = [
    Column("TRIGGER", lambda t: t["name"]),
    Column("KIND", lambda t: t["kind"], keep=60),
    Column("STATE", lambda t: t["state"], keep=90),
    Column("EVENTS IN", lambda t: t["events_in"], "IN", keep=80, right=True),
    Column("LAST EVENT", lambda t: None if t["last_event_at"] is None else _ago(t["last_event_at"]), "LAST",
           keep=50, right=True),
    Column("LAG", lambda t: t.get("lag"), keep=40, right=True),
    Column("LAST ERROR", lambda t: t.get("last_error"), wide=True),
]

NODE_COLUMNS = [
    Column("NODE", lambda n: n["id"] + (" (this one)" if n["this"] else "")),
    Column("ADDRESS", lambda n: n["address"], keep=60),
    Column("STATE", lambda n: n["state"], keep=90),
    Column("HEARTBEAT", lambda n: f"{n['age']:.0f}s ago", "BEAT", keep=50, right=True),
    Column("REPLICAS", lambda n: ", ".join(f"{k} {v}" for k, v in sorted(n["functions"].items())) or None,
           keep=40),
]


def _ago(timestamp: float) -> str:
    return f"{max(0.0, time.time() - timestamp):.0f}s ago"


def _last_errors(rows: list[Row], width: int | None) -> list[str]:
    """A line per row with a last error, beneath its table, cut to `width` (--wide: in a column instead)."""
    if width is None:
        return []
    return [shortened(f"  {row['name'].split(':', 1)[-1]}: last error: {row['last_error']}", width)
            for row in rows if row.get("last_error")]


def _filter_errors(rows: list[Row], width: int | None) -> list[str]:
    """Filters whose expressions failed on some events, with the last error: those events
    were counted as no match, which may not be what the filter meant."""
    said = [f"  {row['name'].split(':', 1)[-1]}: {plural(row['filter_errors'], 'event')}; the last: "
            f"{row.get('last_filter_error') or '?'}" for row in rows if row.get("filter_errors")]
    if not said:
        return []
    return ["", "filter errors (events a filter could not be evaluated on, counted as no match):",
            *[shortened(line, width) for line in said]]


def _elsewhere(report: dict[str, Any]) -> list[str]:
    """What happened to events outside any one function: none matched, or from other meshes."""
    out = []
    if report.get("unrouted"):
        out.append(f"{plural(report['unrouted'], 'event')} matched no subscription: "
                   "`fmesh events list --unrouted` shows the latest")
    bridged = report.get("bridged_in") or {}
    if bridged.get("received"):
        out.append(f"from other meshes: {plural(bridged['received'], 'event')} received; dropped "
                   f"{plural(bridged['duplicates'], 'duplicate')} and {plural(bridged['looped'], 'looped event')}")
    return ["", *out] if out else []
