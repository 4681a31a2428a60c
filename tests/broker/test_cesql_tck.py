"""Runs the official CESQL v1.0 TCK against fmesh.broker.cesql.

Every case of every YAML file of the TCK is its own test. The TCK is read from
``$CESQL_TCK_DIR``, else ``<repo root>/../shared/cesql/tck``, else
``/work/shared/cesql/tck``; the module is skipped when none exists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from fmesh.broker.cesql import CesqlError, CesqlParseError, compile_expression


def _repo_root() -> Path | None:
    for folder in Path(__file__).resolve().parents:
        if (folder / "pyproject.toml").is_file():
            return folder
    return None


def _candidate_dirs() -> list[Path]:
    candidates = []
    if os.environ.get("CESQL_TCK_DIR"):
        candidates.append(Path(os.environ["CESQL_TCK_DIR"]))
    root = _repo_root()
    if root is not None:
        candidates.append(root.parent / "shared" / "cesql" / "tck")
    candidates.append(Path("/work/shared/cesql/tck"))
    return candidates


def _find_tck() -> Path | None:
    return next((path for path in _candidate_dirs() if path.is_dir()), None)


class _TckLoader(yaml.SafeLoader):
    """SafeLoader that keeps timestamps as strings.

    The TCK's values are booleans, integers and strings only; PyYAML would turn
    ``2018-04-26T14:48:09+02:00`` into a datetime.
    """


_TckLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class _RawLoader(yaml.SafeLoader):
    """SafeLoader that resolves no plain scalar: every value stays the text written."""


_RawLoader.yaml_implicit_resolvers = {}


def _load_cases(tck: Path) -> list[Any]:
    params = []
    for path in sorted(tck.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        typed = yaml.load(text, Loader=_TckLoader)  # noqa: S506 - a SafeLoader subclass
        raw = yaml.load(text, Loader=_RawLoader)  # noqa: S506 - a SafeLoader subclass
        for case, raw_case in zip(typed["tests"], raw["tests"], strict=True):
            # Names and expressions are text: ``TRUE`` or ``-10`` must not load
            # as a boolean or an integer.
            case = {**case, "name": raw_case["name"], "expression": raw_case["expression"]}
            params.append(pytest.param(case, id=f"{path.stem}/{case['name']}"))
    return params


TCK_DIR = _find_tck()
if TCK_DIR is None:
    pytest.skip(
        "CESQL TCK not found; looked in: " + ", ".join(str(p) for p in _candidate_dirs()),
        allow_module_level=True,
    )
CASES = _load_cases(TCK_DIR)

# "If absent, when testing the expression, any valid event can be passed."
_DEFAULT_EVENT = {
    "specversion": "1.0",
    "id": "tck-event-id",
    "source": "https://example.com/tck",
    "type": "io.cloudevents.tck",
}


def _input_event(case: dict[str, Any]) -> dict[str, Any]:
    event = dict(case["event"]) if "event" in case else dict(_DEFAULT_EVENT)
    event.update(case.get("eventOverrides") or {})
    return event


def test_tck_is_not_empty() -> None:
    assert len(CASES) > 100


@pytest.mark.parametrize("case", CASES)
def test_tck_case(case: dict[str, Any]) -> None:
    expected_error = case.get("error")
    if expected_error == "parse":
        with pytest.raises(CesqlParseError) as caught:
            compile_expression(case["expression"])
        assert caught.value.kind == "parse"
        assert caught.value.line >= 1 and caught.value.column >= 1
        # No Expression exists, so nothing can match: the TCK's result for
        # these cases, when given, is the Boolean zero value.
        assert case.get("result", False) is False
        return

    result = compile_expression(case["expression"]).evaluate(_input_event(case))

    if "result" in case:
        expected = case["result"]
        assert type(result.value) is type(expected), (result.value, expected)
        assert result.value == expected
    assert all(isinstance(error, CesqlError) for error in result.errors)
    kinds = [error.kind for error in result.errors]
    if expected_error is None:
        assert kinds == [], result.errors
    else:
        assert kinds, f"expected a {expected_error} error, got none"
        assert set(kinds) == {expected_error}, result.errors
