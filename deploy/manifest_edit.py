"""Adding a function to a manifest's text, keeping everything else in it as written
(comments, order, quoting): the entry goes in as lines of text at the end of the
`functions:` block, never by loading and dumping the YAML."""

from __future__ import annotations

from fmesh.deploy.manifest import parse_manifest
from fmesh.deploy.yaml_lines import LocatedYaml

from fmesh.errors import ManifestError

INDENT = "  "


def add_function(text: str, name: str, entry: list[str], file: str = "fmesh.yaml") -> str:
    """`text` with function `name` added; `entry` is its fields as YAML lines, not indented.
    ManifestError when the manifest does not parse, already has `name`, or keeps its
    functions in a form lines cannot be added to (flow style)."""
    manifest = parse_manifest(text, file)  # a manifest that is wrong already is not made worse
    if name in manifest.functions:
        raise ManifestError(file, LocatedYaml(text, file).key_line(("functions", name)), f"functions.{name}",
                            f"there is already a function named {name!r}")
    added = _added(text, name, entry, file)
    if name not in parse_manifest(added, file).functions:  # lines added where YAML does not see them
        raise ManifestError(file, None, "functions", f"cannot tell where to add {name!r}: add it by hand")
    return added


def _added(text: str, name: str, entry: list[str], file: str) -> str:
    located = LocatedYaml(text, file)
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    section = _functions_node(located)
    if section is None:  # no functions: section yet
        return "".join([*lines, "functions:\n", *_block(name, entry, INDENT, INDENT)])
    if type(section).__name__ != "MappingNode":
        raise ManifestError(file, section.start_mark.line + 1, "functions", "expected a mapping of functions")
    if not section.value and section.start_mark.line == section.end_mark.line:  # `functions: {}`
        row, line = section.start_mark.line, lines[section.start_mark.line]
        lines[row] = line[:section.start_mark.column].rstrip() + line[section.end_mark.column:]
        return "".join([*lines[:row + 1], *_block(name, entry, INDENT, INDENT), *lines[row + 1:]])
    if section.flow_style:
        raise ManifestError(file, section.start_mark.line + 1, "functions", "functions are written in flow "
                            "style ({...}) here; write them as a block (one name a line) to have one added")
    key, first = section.value[0]
    indent = " " * key.start_mark.column
    inner = INDENT
    if type(first).__name__ == "MappingNode" and first.value and not first.flow_style:
        inner = " " * max(1, first.value[0][0].start_mark.column - key.start_mark.column)
    end = _end_line(section, lines)
    return "".join([*lines[:end], *_block(name, entry, indent, inner), *lines[end:]])


def _functions_node(located: LocatedYaml):  # type: ignore[no-untyped-def]
    """The value node of the top-level `functions:` key, None if there is none."""
    root = located.node
    for key, value in getattr(root, "value", []) if root is not None else []:
        if getattr(key, "value", None) == "functions":
            return value
    return None


def _end_line(section, lines: list[str]) -> int:  # type: ignore[no-untyped-def]
    """The 0-based line after the last value in `section`: after its innermost last node,
    less blank lines (so comments and blank lines after it stay with what follows)."""
    node = section
    while type(node).__name__ in ("MappingNode", "SequenceNode") and node.value and not node.flow_style:
        last = node.value[-1]
        node = last[1] if isinstance(last, tuple) else last
    end = node.end_mark.line if node.end_mark.column == 0 else node.end_mark.line + 1
    while end > 0 and not lines[end - 1].strip():
        end -= 1
    return end


def _block(name: str, entry: list[str], indent: str, inner: str) -> list[str]:
    return [f"{indent}{name}:\n", *(f"{indent}{inner}{line}\n" for line in entry)]
