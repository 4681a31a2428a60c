"""The manifest loader, fuzzed: random text and bytes, random YAML, and near misses of valid
manifests (keys deleted, renamed or added, wrong types, huge numbers, bad durations and
names, odd unicode, tabs, duplicate keys, anchors and aliases, deep nesting) either load or
raise a ManifestError that starts with `file:line` and names the field; never anything else.

CI runs FMESH_FUZZ_EXAMPLES (default 60) examples per strategy; set it higher to fuzz
longer. Hypothesis is derandomized, so a run is the same run each time."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from fmesh.deploy.deployer import apply_request
from fmesh.deploy.manifest import check_references, load_manifest, parse_manifest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import ROOT, free_port, run_cli

from fmesh.errors import ManifestError

EXAMPLES = int(os.environ.get("FMESH_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
TRIED: dict[str, int] = {}

SEEDS = [
    (ROOT / "examples/quickstart/fmesh.yaml").read_text(),
    (ROOT / "examples/cron/fmesh.yaml").read_text(),
    (ROOT / "examples/kafka-to-nats/fmesh.yaml").read_text(),
    (ROOT / "examples/two-clouds/cloud-a.yaml").read_text(),
    (ROOT / "examples/two-clouds/cloud-b.yaml").read_text(),
    """\
functions:
  node:
    command: [node, server.js]
    workdir: functions/node-hello
    on: [{type: {suffix: .created}, source: /web}]
    secrets: {DB: {file: /run/db}, API_KEY: {env: API_KEY}}
    memory: 256Mi
    scale: {max: 4, concurrency: 8, stable_window: 1m}
    delivery: {content_mode: structured, ordering: ordered, ttl: PT1H, dead_letter: kafka://k:9092/dead}
    filters: [{any: [{cesql: "source = '/web'"}, {exact: {type: x}}]}]
    allow: [peer:eu, anonymous]
  orders:
    external: true
    on: [{type: com.shop.order}]
triggers:
  orders:  {http: {path: /hooks/orders, auth: {hmac_secret_env: ORDERS_SECRET}}}
  nightly: {timer: {cron: "0 3 * * *", type: dev.fmesh.nightly}}
subscriptions:
  audit:
    filter: {type: {prefix: com.shop.}}
    to: https://audit.example.com/events
    delivery: {retries: 3, delay: 1s}
bridges:
  eu:
    to: https://mesh-eu.example.com
    filter: {type: {prefix: com.shop.}}
    auth: {token_env: EU_TOKEN}
peers:
  eu: {auth: {token_env: EU_TOKEN}, allow: {type: {prefix: com.shop.}}, rate: {rate: 100/s, burst: 200}}
""",
]
SEED_DATA = [yaml.safe_load(text) for text in SEEDS]

# Values a near miss puts where another was: wrong types, edges, and what people mistype.
ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([10**40, -1, 0, 2**63, 1e308, "", " ", "10", "10x", "5 s", "-3s", "PT", "P1Y", "1e999",
                     "1m30", "200 ms", "∞", "NaN", "Bad_Name", "a" * 64, "-a", "a-", "é", "a\tb", "x\u0000y",
                     "\u202e", "\ud83d\ude00", "2001-12-14", "0x10", "1_000", "~", "null", "yes", "on", "Off",
                     "http://", "kafka://", "nats:///x", "h.py", "h.py:", ":f", "../../etc/passwd:x",
                     "*", "&", "!!binary", "{{", "[", "#"]),
    st.text(max_size=20), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
KEYS = st.one_of(st.sampled_from(["handler", "command", "on", "env", "scale", "timeout", "delivery", "filters",
                                  "filter", "to", "auth", "retries", "max", "min", "type", "prefix", "cesql",
                                  "http", "timer", "kafka", "nats", "cron", "interval", "path", "timeuot",
                                  "funtions", "Functions", "on ", "", "0", "<<"]),
                 st.text(max_size=8))


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path of keys and indexes inside `value`, shallow first."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    return found


def mutate(data: Any, path: tuple, how: str, value: Any, key: Any) -> Any:
    """`data` with one change at `path`: delete it, replace it, add an unknown key beside it, rename it."""
    if not path:
        return value if how == "replace" else data
    *parents, last = path
    holder = data
    for part in parents:
        holder = holder[part]
    if how == "delete":
        del holder[last]
    elif how == "replace":
        holder[last] = value
    elif how == "add" and isinstance(holder, dict):
        holder[key] = value
    elif how == "rename" and isinstance(holder, dict):
        holder[key] = holder.pop(last)
    return data


@st.composite
def near_miss_data(draw) -> Any:
    """A valid manifest's data, changed in one to three places."""
    data = json.loads(json.dumps(draw(st.sampled_from(SEED_DATA))))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths(data)))
        how = draw(st.sampled_from(["delete", "replace", "replace", "add", "rename"]))
        data = mutate(data, path, how, draw(ODD_VALUES), draw(KEYS))
    return data


def dump(data: Any) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


@st.composite
def near_miss_text(draw) -> str:
    """A valid manifest's text, changed as a hand might: a line doubled (a duplicate key), a
    tab, a character dropped or added, a line moved in or out, an anchor and alias."""
    lines = draw(st.sampled_from(SEEDS)).splitlines()
    for _ in range(draw(st.integers(1, 3))):
        index = draw(st.integers(0, max(len(lines) - 1, 0)))
        line = lines[index] if lines else ""
        edit = draw(st.sampled_from(["double", "tab", "drop", "insert", "indent", "dedent", "anchor", "alias",
                                     "delete", "unicode"]))
        column = draw(st.integers(0, len(line)))
        if edit == "double":
            lines.insert(index, line)
        elif edit == "tab":
            lines[index] = line[:column] + "\t" + line[column:]
        elif edit == "drop":
            lines[index] = line[:column] + line[column + 1:]
        elif edit == "insert":
            lines[index] = line[:column] + draw(st.sampled_from(list(":-{}[],&*!|>'\"#%@`?"))) + line[column:]
        elif edit == "indent":
            lines[index] = "  " + line
        elif edit == "dedent":
            lines[index] = line[2:]
        elif edit == "anchor" and ":" in line:
            lines[index] = line.replace(":", ": &a", 1) if not line.rstrip().endswith(":") else line + " &a"
        elif edit == "alias" and ":" in line:
            lines[index] = line.split(":", 1)[0] + ": *a"
        elif edit == "delete" and lines:
            del lines[index]
        elif edit == "unicode":
            lines[index] = line[:column] + draw(st.characters(codec="utf-8")) + line[column:]
    return "\n".join(lines) + "\n"


YAML_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10))
YAML_DATA = st.recursive(YAML_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(KEYS, st.integers()), inner, max_size=4)), max_leaves=20)
SECTIONED = st.dictionaries(st.sampled_from(["functions", "subscriptions", "triggers", "bridges", "peers"]),
                            st.dictionaries(st.one_of(st.sampled_from(["a", "hello", "Bad"]), KEYS),
                                            YAML_DATA, max_size=2), min_size=1, max_size=3)


def bomb(levels: int, width: int, where: str) -> str:
    """A billion laughs: each anchor lists the one before it `width` times."""
    lines = ["functions:", "  a:", "    handler: h.py:f", "    " + where + ":", "      headers:",
             f"        l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"        l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


LOCATED = re.compile(r"^(?P<file>.+?):(?P<line>\d+): ")


def check(path: Path, data: str | bytes, target: str) -> None:
    """Load `data` as a manifest at `path`: a Manifest whose deploy request can be built
    quickly, or a ManifestError located at file:line that names a field."""
    TRIED[target] = TRIED.get(target, 0) + 1
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    started = time.monotonic()
    try:
        manifest = load_manifest(path)
        check_references(manifest, path, set())
        json.dumps(apply_request(manifest, [], path.parent))  # what `fmesh deploy` sends
    except ManifestError as error:
        located = LOCATED.match(str(error))
        assert located and located["file"] == str(path), f"not located at file:line: {error}"
        assert error.line is not None and 1 <= error.line <= max(len(data.splitlines()), 1) + 1, error
        if getattr(error, "problems", None):  # a value that did not validate: its field is named
            assert error.field, error
    assert time.monotonic() - started < 10, f"took {time.monotonic() - started:.1f}s"  # a hang, not a speed


@pytest.fixture(scope="module", autouse=True)
def tally() -> Any:
    yield
    print("\nmanifest fuzz cases per target:", TRIED)


@pytest.fixture
def manifest_path(tmp_path: Path) -> Path:
    (tmp_path / "h.py").write_text("def f(event):\n    return None\n")
    return tmp_path / "fmesh.yaml"


@FUZZ
@given(text=st.text())
def test_random_text(manifest_path, text):
    check(manifest_path, text, "random text")


@FUZZ
@given(data=st.binary())
def test_random_bytes(manifest_path, data):
    check(manifest_path, data, "random bytes")


@FUZZ
@given(data=st.one_of(YAML_DATA, SECTIONED))
def test_random_yaml(manifest_path, data):
    check(manifest_path, dump(data), "random yaml")


@FUZZ
@given(data=near_miss_data())
def test_near_miss_manifests(manifest_path, data):
    check(manifest_path, dump(data), "near-miss data")


@FUZZ
@given(text=near_miss_text())
def test_near_miss_text(manifest_path, text):
    check(manifest_path, text, "near-miss text")


@FUZZ
@given(levels=st.integers(1, 12), width=st.integers(1, 12), where=st.sampled_from(["sink_options", "env"]))
def test_alias_bombs_are_refused_quickly(manifest_path, levels, width, where):
    check(manifest_path, bomb(levels, width, where), "alias bombs")


# What the fuzzing found, each pinned down.

def located(manifest_path: Path, text: str | bytes) -> ManifestError:
    manifest_path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ManifestError) as caught:
        load_manifest(manifest_path)
    assert LOCATED.match(str(caught.value)), caught.value
    return caught.value


def test_deep_nesting_is_refused_at_its_line_not_a_recursion_error(manifest_path):
    error = located(manifest_path, "functions:\n  a: " + "[" * 5000 + "]" * 5000 + "\n")
    assert error.line == 2 and "nested more than 100 levels deep" in error.problem
    assert "nested" in located(manifest_path, "a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 150))).problem


def test_an_integer_python_will_not_convert_is_located(manifest_path):
    error = located(manifest_path, "functions:\n  a:\n    handler: h.py:f\n    scale: {max: " + "9" * 5000 + "}\n")
    assert error.line == 4 and "not a number fmesh takes" in error.problem


def test_a_key_given_twice_is_an_error_not_the_last_one_silently(manifest_path):
    error = located(manifest_path, "functions:\n  a:\n    handler: h.py:f\n  a:\n    handler: h.py:f\n")
    assert (error.line, error.field) == (4, "functions.a") and "given twice (first on line 2)" in error.problem
    assert located(manifest_path, "functions: {a: {handler: h.py:f, handler: h.py:f}}\n").field == \
        "functions.a.handler"


def test_a_billion_laughs_is_refused_quickly(manifest_path):
    started = time.monotonic()
    error = located(manifest_path, bomb(10, 10, "sink_options"))
    assert time.monotonic() - started < 10 and "aliases expand this to more than 100000 values" in error.problem
    assert error.field.startswith("functions.a.sink_options.headers.l")


def test_an_alias_inside_its_own_anchor_is_refused(manifest_path):
    error = located(manifest_path, "functions:\n  a:\n    handler: h.py:f\n    sink_options: &s {headers: [*s]}\n")
    assert error.line == 4 and "endless" in error.problem


def test_aliases_that_repeat_a_little_still_work(manifest_path):
    manifest_path.write_text("functions:\n  a:\n    handler: h.py:f\n    delivery: &d {retries: 1}\n"
                             "  b:\n    handler: h.py:f\n    delivery: *d\n")
    assert load_manifest(manifest_path).functions["b"].delivery.retries == 1


def test_unprintable_characters_and_bytes_that_are_not_utf8_are_located(manifest_path):
    assert located(manifest_path, "functions:\n  a:\n    env: {A: \"\x07\"}\n").line == 3
    error = located(manifest_path, b"functions:\n  a: \xff\n")
    assert error.line == 2 and "not UTF-8" in error.problem


def test_a_filter_key_with_a_bracket_is_located(manifest_path):
    error = located(manifest_path, "functions:\n  a:\n    handler: h.py:f\n    on: [{'type[x': y}]\n")
    assert (error.line, error.field) == (4, "functions.a.on.0.type[x")


def test_a_date_where_a_duration_goes_says_what_a_duration_is(manifest_path):
    error = located(manifest_path, "functions:\n  a:\n    handler: h.py:f\n    timeout: 2001-12-14\n")
    assert (error.line, error.field) == (4, "functions.a.timeout") and "200ms" in error.problem


def test_a_huge_value_is_shortened_in_the_message():
    with pytest.raises(ManifestError) as caught:
        parse_manifest("functions:\n  a:\n    handler: h.py:f\n    scale: {max: " + "9" * 4000 + "}\n")
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize("text", [
    "functions:\n  a:\n\thandler: h.py:f\n",
    "functions:\n  a:\n    handler: h.py:f\n  a:\n    handler: h.py:f\n",
    bomb(9, 9, "sink_options"),
    "functions:\n  Bad_Name:\n    handler: h.py:f\n",
    "functions:\n  '[/a]':\n    handler: h.py:f\n",  # rich markup in a message used to be a MarkupError
])
def test_fmesh_deploy_of_a_bad_manifest_says_one_line_without_a_traceback(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = run_cli(["deploy", "-f", str(path), "--mesh", "http://127.0.0.1:9"], dict(os.environ), check=False,
                     timeout=30)
    TRIED["fmesh deploy -f (subprocess)"] = TRIED.get("fmesh deploy -f (subprocess)", 0) + 1
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}:"), result.stderr


def test_an_empty_key_is_named_as_one(manifest_path):
    assert located(manifest_path, "'': 1\n").field == "''"
    assert located(manifest_path, "functions:\n  '': {handler: h.py:f}\n").field == "functions.''"


def test_the_seeds_of_the_near_misses_are_valid_manifests():
    for text in SEEDS:
        parse_manifest(text)


def test_fmesh_up_refuses_an_alias_bomb_in_one_line_before_it_starts(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(bomb(9, 9, "sink_options"))
    result = run_cli(["up", "-f", str(path), "--port", str(free_port()), "--data-dir", str(tmp_path / "data")],
                     dict(os.environ), check=False, timeout=30)
    TRIED["fmesh up -f (subprocess)"] = TRIED.get("fmesh up -f (subprocess)", 0) + 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and "Traceback" not in result.stderr + result.stdout
    assert len(lines) == 1 and "aliases expand this to more than 100000 values" in lines[0], result.stderr
