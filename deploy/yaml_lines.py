"""YAML loading that remembers where every value came from, for `file:line` errors."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from typing import Any

# PyYAML is imported where it is used: the mesh process only needs it to read a
# manifest from disk (`fmesh up -f`), and it costs memory for as long as the mesh runs.


@cache
def manifest_loader() -> type:
    """A SafeLoader with YAML 1.2 booleans: only true/false. YAML 1.1 reads `on:` as True."""
    import yaml

    class ManifestLoader(yaml.SafeLoader):
        pass

    ManifestLoader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    ManifestLoader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    return ManifestLoader


class LocatedYaml:
    """A parsed YAML document plus the line of each value, by its path of keys and indexes."""

    def __init__(self, text: str, file: str) -> None:
        import yaml

        self.file = file
        self.node = yaml.compose(text, Loader=manifest_loader())
        self.data: Any = yaml.load(text, Loader=manifest_loader()) if self.node is not None else None

    def line_of(self, path: Sequence[str | int]) -> int | None:
        """The 1-based line of the value at `path`, or of its nearest ancestor that exists."""
        node = self.node
        line = node.start_mark.line + 1 if node is not None else None
        for key in path:
            child = _child(node, key)
            if child is None:
                break
            node = child
            line = node.start_mark.line + 1
        return line

    def key_line(self, path: Sequence[str | int]) -> int | None:
        """The line where the last key of `path` is written (for unknown keys)."""
        parent = self.node
        for key in path[:-1]:
            parent = _child(parent, key)
            if parent is None:
                return self.line_of(path)
        if isinstance(parent, _yaml().MappingNode):
            for key_node, _ in parent.value:
                if key_node.value == str(path[-1]):
                    return key_node.start_mark.line + 1
        return self.line_of(path)


def _yaml() -> Any:
    import yaml

    return yaml


def _child(node: Any, key: str | int) -> Any:
    yaml = _yaml()
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == str(key):
                return value_node
    elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
        return node.value[key]
    return None
