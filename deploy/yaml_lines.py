"""YAML loading that remembers where every value came from, for `file:line` errors."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from typing import Any

from fmesh.errors import ManifestError

# PyYAML is imported where it is used: the mesh process only needs it to read a
# manifest from disk (`fmesh up -f`), and it costs memory for as long as the mesh runs.

MAX_DEPTH = 100          # mappings and lists inside each other; a manifest needs about ten
MAX_EXPANDED = 100_000   # values the aliases may multiply a document to (a billion laughs has 10**9)


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

    def construct_int(loader: Any, node: Any) -> int:
        try:
            return yaml.SafeLoader.construct_yaml_int(loader, node)
        except ValueError as exc:  # more digits than Python turns into an int (4300)
            raise yaml.constructor.ConstructorError(None, None, f"not a number fmesh takes: {exc}",
                                                    node.start_mark) from None

    ManifestLoader.add_constructor("tag:yaml.org,2002:int", construct_int)
    return ManifestLoader


class LocatedYaml:
    """A parsed YAML document plus the line of each value, by its path of keys and indexes."""

    def __init__(self, text: str, file: str) -> None:
        """Raises yaml.YAMLError for what is not YAML, ManifestError for YAML fmesh refuses:
        nested too deep, aliases that multiply it past MAX_EXPANDED values or into a cycle,
        a key twice in one mapping."""
        self.file = file
        self._check_depth(text)
        loader = manifest_loader()(text)
        try:
            self.node = loader.get_single_node()
            if self.node is not None:
                _check_graph(self.node, file)
            self.data: Any = loader.construct_document(self.node) if self.node is not None else None
        finally:
            loader.dispose()

    def _check_depth(self, text: str) -> None:
        """Parse events (which PyYAML reads without recursion) before composing (which recurses)."""
        yaml = _yaml()
        depth = 0
        for event in yaml.parse(text, Loader=manifest_loader()):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise ManifestError(self.file, event.start_mark.line + 1, "",
                                        f"nested more than {MAX_DEPTH} levels deep")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1

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


def _check_graph(root: Any, file: str) -> None:
    """Refuse a key twice in a mapping, and aliases that loop or multiply the document past
    MAX_EXPANDED values (or twice what is written, if more); one visit per node, however
    often aliases repeat it."""
    yaml = _yaml()
    sizes: dict[int, int] = {}  # values a node stands for, aliases expanded
    finished: list[tuple[Any, tuple]] = []
    open_nodes: set[int] = set()
    stack: list[tuple[Any, tuple, bool]] = [(root, (), False)]
    while stack:
        node, path, done = stack.pop()
        if done:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for _, child in _children(node))
            finished.append((node, path))
        elif id(node) in open_nodes:
            raise ManifestError(file, node.start_mark.line + 1, dotted(path), "an alias inside its own anchor "
                                "makes an endless value")
        elif id(node) not in sizes:
            if isinstance(node, yaml.MappingNode):
                _check_unique_keys(node, path, file)
            open_nodes.add(id(node))
            stack.append((node, path, True))
            stack.extend((child, (*path, key), False) for key, child in reversed(_children(node)))
    limit = max(MAX_EXPANDED, 2 * len(finished))
    for node, path in finished:  # the innermost first: where the aliases pass the limit
        if sizes[id(node)] > limit:
            raise ManifestError(file, node.start_mark.line + 1, dotted(path), f"aliases expand this to more than "
                                f"{limit} values: write it out, or alias less")


def _children(node: Any) -> list[tuple[Any, Any]]:
    """(key, node) of a mapping's keys and values or a list's items; none for a scalar."""
    yaml = _yaml()
    if isinstance(node, yaml.MappingNode):
        return [pair for key, value in node.value for pair in (("<key>", key), (_key_text(key), value))]
    if isinstance(node, yaml.SequenceNode):
        return list(enumerate(node.value))
    return []


def _check_unique_keys(node: Any, path: tuple, file: str) -> None:
    first_lines: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, _yaml().ScalarNode) or key.value == "<<":
            continue
        line = key.start_mark.line + 1
        if (key.tag, key.value) in first_lines:
            raise ManifestError(file, line, dotted((*path, key.value)), f"{key.value!r} is given twice (first on "
                                f"line {first_lines[key.tag, key.value]}): YAML would keep only the last")
        first_lines[key.tag, key.value] = line


def _key_text(key: Any) -> str:
    return key.value if isinstance(key, _yaml().ScalarNode) else "<key>"


def dotted(path: Sequence[Any]) -> str:
    """A field's path as errors name it: `functions.hello.scale`; an empty key as ''."""
    return ".".join(str(part) if part != "" else "''" for part in path)


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
