"""Which meshes an event has passed through: the `fmeshpath` extension.

A mesh that forwards an event over a bridge appends its own id to the path. A mesh
never forwards to a mesh already on the path, and drops an arriving event that already
names it, so A→B plus B→A, or a ring A→B→C→A, cannot loop. (The ingress refuses a
malformed path: `fmesh.events.checked_internal`.)
"""

from __future__ import annotations

from fmesh.events import PATH, Event, with_extension
from fmesh.names import NAME_RULE, is_name

__all__ = ["PATH", "check_mesh_id", "visited", "with_visit"]


def visited(event: Event) -> list[str]:
    """The ids of the meshes the event has been forwarded from, oldest first."""
    value = event.attributes.get(PATH)
    return value.split(",") if isinstance(value, str) and value else []


def with_visit(event: Event, mesh_id: str) -> Event:
    """`event` as mesh `mesh_id` forwards it: its id appended to the path."""
    return with_extension(event, **{PATH: ",".join([*visited(event), mesh_id])})


def check_mesh_id(value: str) -> str:
    if not is_name(value):
        raise ValueError(f"mesh id {value!r} is not valid: {NAME_RULE}")
    return value
