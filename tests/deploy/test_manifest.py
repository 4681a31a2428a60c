from __future__ import annotations

import pytest
from fmesh.deploy.manifest import load_manifest, parse_manifest

from fmesh.errors import ManifestError

GOOD = """\
functions:
  resize:
    handler: functions/resize/handler.py:handle
    on:
      - type: com.shop.order.created
      - type: {prefix: com.shop.}
        source: /web
    env: {SIZE: 128, DEBUG: true}
    scale: {min: 0, max: 4, concurrency: 8, idle_timeout: 30s}
    timeout: 10s
    delivery: {retries: 5, backoff: exponential, delay: 200ms, dead_letter: failed-orders}
"""


def test_the_design_sketch_validates():
    function = parse_manifest(GOOD).functions["resize"]
    assert function.scale.concurrency == 8 and function.scale.idle_timeout == 30
    assert function.timeout == 10 and function.delivery.delay == pytest.approx(0.2)
    assert function.env == {"SIZE": "128", "DEBUG": "true"}
    assert function.folder == "functions/resize" and function.handler_in_folder == "handler.py:handle"
    matches = function.compiled_filter()
    assert matches({"type": "com.shop.order.created", "source": "/x"})
    assert matches({"type": "com.shop.refund", "source": "/web"})
    assert not matches({"type": "com.shop.refund", "source": "/app"})


def error_for(text: str) -> ManifestError:
    with pytest.raises(ManifestError) as error:
        parse_manifest(text, "fmesh.yaml")
    return error.value


def test_a_misspelt_field_names_file_line_and_field():
    error = error_for(GOOD.replace("    timeout: 10s", "    timeuot: 10s"))
    assert (error.file, error.line, error.field) == ("fmesh.yaml", 10, "functions.resize.timeuot")
    assert "unknown field 'timeuot'" in str(error) and "timeout" in error.problem
    assert str(error).startswith("fmesh.yaml:10: functions.resize.timeuot:")


def test_a_bad_value_says_what_was_expected():
    error = error_for(GOOD.replace("idle_timeout: 30s", "idle_timeout: soon"))
    assert error.line == 9 and error.field == "functions.resize.scale.idle_timeout"
    assert "expected a duration such as 200ms" in str(error)
    error = error_for(GOOD.replace("backoff: exponential", "backoff: quadratic"))
    assert error.field == "functions.resize.delivery.backoff" and "'exponential' or 'linear'" in str(error)


def test_every_problem_is_listed():
    error = error_for(GOOD.replace("max: 4", "max: 0").replace("retries: 5", "retries: lots"))
    assert "functions.resize.scale.max" in str(error) and "functions.resize.delivery.retries" in str(error)


def test_missing_handler_bad_name_and_bad_filter():
    error = error_for("functions:\n  a:\n    on: []\n")
    assert error.field == "functions.a" and "give either handler" in str(error)
    error = error_for("functions:\n  a:\n    handler: h.py:f\n    command: [node, s.js]\n")
    assert "not both" in str(error)
    error = error_for("functions:\n  Bad_Name:\n    handler: h.py:f\n")
    assert error.field == "functions.Bad_Name" and "not a valid name" in str(error)
    error = error_for("functions:\n  a:\n    handler: h.py:f\n    on: [{type: {prefx: x}}]\n")
    assert error.field == "functions.a.on.0.type" and "prefx" in str(error)
    error = error_for("functions:\n  a:\n    handler: h.py:f\n    filters: [{nope: {type: x}}]\n")
    assert "unknown filter dialect 'nope'" in str(error)


def test_an_env_name_no_environment_can_hold_is_refused_at_once():
    """`A=B` was accepted, then the replica failed to start and the deploy waited 30 s."""
    for name in ('"A=B"', '""', '"1X"', '"a b"'):
        error = error_for(f"functions:\n  a:\n    handler: h.py:f\n    env: {{{name}: x}}\n")
        assert error.field == "functions.a.env" and "is not an environment variable name" in str(error), name
    error = error_for('functions:\n  a:\n    handler: h.py:f\n    env: {A: "x\\0y"}\n')
    assert "the value of A holds a NUL character" in str(error)
    assert parse_manifest("functions:\n  a:\n    handler: h.py:f\n    env: {LOG_LEVEL: debug, _X1: 2}\n")


@pytest.mark.parametrize("field, yaml", [
    ("functions.a.env.A", 'handler: h.py:f\n    env: {A: "\\ud800"}'),
    ("functions.a.on.0.type", 'handler: h.py:f\n    on: [{type: "t.\\udcff"}]'),
    ("functions.a.handler", 'handler: "h\\ud83d.py:f"'),
    ("functions.a.env.[key]", 'handler: h.py:f\n    env: {"[key]": "\\ud800"}'),  # no marker of the walk's
])
def test_a_string_with_a_lone_surrogate_is_refused_where_it_is(field, yaml):
    """`"\\ud800"` in YAML is a string no UTF-8 can carry: in env, the replica died before it
    connected (and the deploy waited 30 s); the CLI itself failed sending it."""
    error = error_for(f"functions:\n  a:\n    {yaml}\n")
    assert error.field == field and "is not valid Unicode" in str(error) and "lone surrogate" in str(error)
    assert error.line == 2 + yaml.count("\n") + 1


def test_unknown_top_level_section_and_bad_yaml():
    assert "unknown field 'funtions'" in str(error_for("funtions: {}\n"))
    error = error_for("functions:\n  a: [\n")
    assert error.line is not None and "not valid YAML" in str(error)


def test_yaml_on_key_is_not_a_boolean():
    # YAML 1.1 reads `on` as True; the manifest keeps YAML 1.2's booleans.
    assert parse_manifest("functions:\n  a:\n    handler: h.py:f\n    on: [{type: x}]\n").functions["a"].on


def test_load_checks_the_handler_file_exists(tmp_path):
    path = tmp_path / "fmesh.yaml"
    path.write_text("functions:\n  a:\n    handler: nowhere/h.py:f\n")
    with pytest.raises(ManifestError) as error:
        load_manifest(path)
    assert error.value.line == 3 and "does not exist" in str(error.value)
    with pytest.raises(ManifestError, match="cannot read the manifest"):
        load_manifest(tmp_path / "missing.yaml")


def test_command_functions_secrets_and_memory():
    function = parse_manifest("""functions:
  node:
    command: [node, server.js]
    workdir: functions/node-hello
    secrets: [API_KEY]
    memory: 256Mi
    delivery: {content_mode: structured}
""").functions["node"]
    assert function.folder == "functions/node-hello" and function.handler_in_folder is None
    assert function.memory == 256 * 1024 * 1024 and function.secret_sources() == {"API_KEY": ("API_KEY", None)}
    assert function.delivery.content_mode == "structured"
    files = parse_manifest("functions:\n  a:\n    handler: h.py:f\n    secrets: {DB: {file: /run/db}}\n")
    assert files.functions["a"].secret_sources() == {"DB": (None, "/run/db")}
    assert "at least 16Mi" in str(error_for("functions:\n  a:\n    handler: h.py:f\n    memory: 1Ki\n"))
    assert "256Mi" in str(error_for("functions:\n  a:\n    handler: h.py:f\n    memory: lots\n"))
    no_source = "functions:\n  a:\n    handler: h.py:f\n    secrets: {X: {}}\n"
    assert "exactly one of env or file" in str(error_for(no_source))
    assert "workdir goes with command" in str(error_for("functions:\n  a:\n    handler: h.py:f\n    workdir: x\n"))


def test_a_cesql_parse_error_names_file_line_and_column():
    error = error_for("""functions:
  a:
    handler: h.py:f
    filters:
      - exact: {type: com.shop.order}
      - any:
          - cesql: "source = '/web'"
          - cesql: "INT(amount) > > 100"
""")
    assert (error.line, error.field) == (8, "functions.a.filters.1.any.1.cesql")
    assert "invalid CESQL expression" in str(error) and "line 1, column 15" in str(error)


BRIDGE = """\
bridges:
  eu:
    to: https://mesh-eu.example.com
    filter: {type: {prefix: com.shop.}}
    filters: [{cesql: "region = 'eu'"}]
    auth: {hmac_secret_env: EU_SECRET, peer: us}
    tls: {ca: /etc/fmesh/ca.pem}
    delivery: {ttl: 1h}
"""


def test_the_design_sketch_of_a_bridge_validates_with_waiting_defaults():
    bridge = parse_manifest(BRIDGE).bridges["eu"]
    assert bridge.auth.peer == "us" and str(bridge.tls.ca) == "/etc/fmesh/ca.pem"
    assert bridge.delivery.ttl == 3600 and bridge.delivery.retries is None and bridge.delivery.max_delay == 5
    matches = bridge.compiled_filter()
    assert matches({"type": "com.shop.order", "region": "eu"}) and not matches({"type": "com.shop.order"})


@pytest.mark.parametrize("change, line, field, says", [
    (("https://mesh-eu.example.com", "kafka://h:9092/t"), 3, "bridges.eu.to", "the other mesh's URL"),
    (("peer: us", "token_env: EU_TOKEN"), 6, "bridges.eu.auth", "exactly one of"),
    (("ca: /etc/fmesh/ca.pem", "cert: /c.pem"), 7, "bridges.eu.tls", "cert and key go together"),
    (("ttl: 1h", "ttl: soon"), 8, "bridges.eu.delivery.ttl", "200ms"),
    (("    auth:", "    oauth:"), 6, "bridges.eu.oauth", "unknown field"),
])
def test_bridge_mistakes_are_located(change, line, field, says):
    error = error_for(BRIDGE.replace(*change))
    assert (error.line, error.field) == (line, field) and says in error.problem, error


def test_relative_files_a_manifest_names_are_anchored_to_its_folder(tmp_path):
    from fmesh.deploy.deployer import apply_request

    manifest = parse_manifest(BRIDGE.replace("ca: /etc/fmesh/ca.pem", "ca: certs/ca.pem, cert: me.pem, key: /k.pem")
                              .replace("{hmac_secret_env: EU_SECRET, peer: us}", "{token_file: eu.token}"))
    spec = apply_request(manifest, [], tmp_path)["bridges"]["eu"]["spec"]
    assert spec["tls"] == {"ca": str(tmp_path / "certs/ca.pem"), "cert": str(tmp_path / "me.pem"), "key": "/k.pem"}
    assert spec["auth"]["token_file"] == str(tmp_path / "eu.token")


def test_a_function_and_a_bridge_may_not_share_a_name(tmp_path):
    from fmesh.deploy.manifest import check_references

    path = tmp_path / "fmesh.yaml"
    path.write_text(BRIDGE + "functions:\n  eu:\n    handler: h.py:handle\n")
    with pytest.raises(ManifestError, match="a function is named 'eu' too") as caught:
        check_references(parse_manifest(path.read_text(), str(path)), path, set())
    assert caught.value.line == 2


def test_an_external_function_has_no_code_and_no_reply_to():
    manifest = parse_manifest("functions:\n  orders:\n    external: true\n    on: [{type: t}]\n")
    assert manifest.functions["orders"].external and manifest.functions["orders"].folder is None
    with pytest.raises(ManifestError, match="has no handler, command or workdir"):
        parse_manifest("functions:\n  orders:\n    external: true\n    handler: a/h.py:handle\n")
    with pytest.raises(ManifestError, match="reply_to is not supported"):
        parse_manifest("functions:\n  orders:\n    external: true\n    reply_to: http://x/\n")
