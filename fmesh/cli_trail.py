"""`fmesh trace` and `fmesh events`: where events went, and what happens to them now."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Annotated, Any

import typer

from fmesh.cli_shared import CaOption, MeshOption, TokenOption, client, console, errors, fail
from fmesh.errors import FmeshError
from fmesh.settings import DEFAULT_MESH_URL
from fmesh.terminal import escape_controls

events_app = typer.Typer(help="Events as they come and go: a live tail, and those that matched nothing.",
                         no_args_is_help=True)


def trace(event_id: Annotated[str, typer.Argument(help="The event's id (its `id` attribute).")],
          as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
          mesh: MeshOption = DEFAULT_MESH_URL, token: TokenOption = None, ca: CaOption = None) -> None:
    """Where an event went: who sent it, what it matched, every attempt, its replies and where it ended."""
    try:
        with client(mesh, token, ca) as mesh_client:
            entries = mesh_client.trace(event_id)
    except FmeshError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps({"trail": entries}, indent=2))
        return
    for line in trace_lines(entries):
        console.out(line, highlight=False)


@events_app.command("tail")
def tail(filter: Annotated[list[str] | None, typer.Option(
             "--filter", help="attribute=value the event must have (repeatable), e.g. type=com.shop.order")] = None,
         cesql: Annotated[str | None, typer.Option(help="A CESQL expression the event must match.")] = None,
         function: Annotated[str | None, typer.Option(help="Only what concerns this function.")] = None,
         as_json: Annotated[bool, typer.Option(
             "--json", help="One JSON object per line; its kind is accepted, or what an attempt came to.")] = False,
         mesh: MeshOption = DEFAULT_MESH_URL, token: TokenOption = None, ca: CaOption = None) -> None:
    """Events as they are accepted, and what each attempt at them comes to, until Ctrl-C."""
    try:
        with client(mesh, token, ca) as mesh_client:
            said = lambda: errors.print(f"watching events at {mesh}; Ctrl-C to stop", highlight=False)  # noqa: E731
            for kind, record in mesh_client.watch_events(filter or [], cesql, function, said):
                if as_json:
                    print(json.dumps({"kind": kind, **record}), flush=True)
                else:
                    console.out(record_line(kind, record), highlight=False)
    except FmeshError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass


@events_app.command("list")
def list_events(unrouted: Annotated[bool, typer.Option(
                    "--unrouted", help="Only events that matched no subscription.")] = False,
                limit: Annotated[int, typer.Option("-n", "--limit", min=1, max=10_000)] = 50,
                as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
                mesh: MeshOption = DEFAULT_MESH_URL, token: TokenOption = None, ca: CaOption = None) -> None:
    """The latest events accepted, newest first, with where each was routed (`--unrouted`: only
    those that matched nothing)."""
    try:
        with client(mesh, token, ca) as mesh_client:
            events = mesh_client.recent_events(limit, unrouted)
    except FmeshError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps({"events": events}, indent=2))
        return
    if not events:
        console.out("No unrouted events in the trail: every recent event matched a subscription." if unrouted
                    else "No events in the trail yet.")
    for event in events:
        routed = ", ".join(_text(s) for s in event["routed"]) or "matched nothing"
        console.out(f"{_clock(event['at'])}  {_text(event['id'])}  {_text(event['type'])}  from "
                    f"{_text(event['source'])}  sent by {_text(event['sender'])} → {routed}", highlight=False)


# -- text ------------------------------------------------------------------------------------

def trace_lines(entries: list[dict[str, Any]]) -> list[str]:
    """The trail as a tree: the event, then per subscription its steps, then its replies."""
    return [line for entry in entries for line in (_headline(entry), *_tree(entry))]


def _tree(entry: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    branches = _branches(entry)
    for i, (head, body) in enumerate(branches):
        last = i == len(branches) - 1
        lines.append(f"{'└─' if last else '├─'} {head}")
        lines.extend(f"{'   ' if last else '│  '}{line}" for line in body)
    return lines


def _headline(entry: dict[str, Any]) -> str:
    if entry["at"] is None:
        line = f"{_text(entry['id'])} from {_text(entry['source'])}  {_unstored(entry)}"
        return line + (f"  (reply to {_text(entry['parent']['id'])})" if entry.get("parent") else "")
    line = (f"{_text(entry['id'])}  {_text(entry['type'])}  from {_text(entry['source'])}  sent by "
            f"{_text(entry['sender'])}  at {_clock(entry['at'])}")
    if entry.get("path"):
        line += f"  bridged from {_text(entry['path'].replace(',', ' → '))}"
    if entry.get("parent"):
        line += f"  (reply to {_text(entry['parent']['id'])})"
    if entry.get("traceparent"):
        line += f"  trace {_text(entry['traceparent'].split('-')[1] if '-' in entry['traceparent'] else '')}"
    return line


def _branches(entry: dict[str, Any]) -> list[tuple[str, list[str]]]:
    if not entry["outcome"] and entry["at"] is not None:
        return [("matched nothing: no subscription's filter passed it, so it was not stored", [])]
    branches = []
    for subscription, outcome in entry["outcome"].items():
        steps = [s for s in entry["steps"] if s["subscription"] == subscription and s["kind"] != "reply"]
        branches.append((f"{_text(subscription)}: {_outcome(outcome, steps)}", [_step_line(s) for s in steps]))
    branches.extend((f"reply {_text(r['id'])}  {_text(r['type']) if r['at'] is not None else _unstored(r)}",
                      _tree(r)) for r in entry["replies"])
    others = [s for s in entry["steps"] if s["subscription"] not in entry["outcome"] and s["kind"] != "reply"]
    branches.extend((_step_line(s), []) for s in others)
    return branches


def _unstored(entry: dict[str, Any]) -> str:
    """What an entry without an arrival is: a reply the mesh dropped, or one the trail forgot."""
    return "not stored" if entry.get("stored") is False else "(its arrival is no longer in the trail)"


def _outcome(outcome: str, steps: list[dict[str, Any]]) -> str:
    last = steps[-1] if steps else None
    if outcome == "retrying" and last and last["due"]:
        return f"retrying, attempt {last['attempt'] + 1} due at {_clock(last['due'])} ({_until(last['due'])})"
    if outcome == "pending":
        return "pending (not attempted yet)" if not steps else "pending"
    return outcome


def _step_line(step: dict[str, Any]) -> str:
    parts = [f"{_clock(step['at'])}  {step['kind']}"]
    if step["attempt"]:
        parts.append(f"attempt {step['attempt']}")
    if step["duration_ms"] is not None:
        parts.append(f"{step['duration_ms']:.1f} ms")
    if step["status"] is not None:
        parts.append(f"status {step['status']}")
    line = ", ".join(parts)
    if step["detail"]:
        line += f" → {_text(step['detail'])}"
    if step["error"]:
        line += f": {_text(step['error'])}"
    return line


def record_line(kind: str, record: dict[str, Any]) -> str:
    """One line of `fmesh events tail`."""
    head = f"{_clock(record['at'])}  {_text(record['id'])}  {_text(record.get('type') or '')}"
    if kind == "accepted":
        routed = ", ".join(_text(s) for s in record["routed"]) or "nothing (not stored)"
        return f"{head}  accepted from {_text(record['sender'])} → {routed}"
    return f"{head}  {_text(record['subscription'])}  " + _step_line(record).split("  ", 1)[1]


def _clock(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%H:%M:%S.%f")[:-3]


def _until(timestamp: float) -> str:
    left = timestamp - time.time()
    return f"in {left:.1f}s" if left > 0 else "due now"


def _text(value: Any) -> str:
    """A value from an event: whatever its producer sent, made safe to print."""
    return escape_controls(str(value)).replace("\n", "\\n")
