"""W3C trace context: what is read, refused, made and derived (fmesh.tracecontext)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fmesh.errors import InvalidEvent
from fmesh.tracecontext import (
    MAX_TRACESTATE_CHARS,
    MAX_TRACESTATE_MEMBERS,
    TraceContext,
    check_trace_attributes,
    check_traceparent,
    check_tracestate,
    message_context,
    new_context,
    new_span_id,
    new_traceparent,
    parse_traceparent,
)

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def hex_string(length: int) -> st.SearchStrategy[str]:
    return st.text("0123456789abcdef", min_size=length, max_size=length)


def test_a_valid_traceparent_is_read():
    context = parse_traceparent(VALID)
    assert context == TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01")
    assert context.traceparent == VALID and context.sampled


@given(hex_string(32).filter(lambda s: set(s) != {"0"}), hex_string(16).filter(lambda s: set(s) != {"0"}),
       hex_string(2))
def test_every_well_formed_traceparent_round_trips(trace_id, span_id, flags):
    value = f"00-{trace_id}-{span_id}-{flags}"
    assert parse_traceparent(value).traceparent == value


@pytest.mark.parametrize("value", [
    "", "00", VALID.upper(), VALID + "-", VALID[:-1], " " + VALID,
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",   # all-zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",   # all-zero parent id
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   # version ff is invalid
    "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
    "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
    "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",  # a later version goes on with a dash
    7, None, True,
])
def test_a_malformed_traceparent_is_refused_naming_it(value):
    with pytest.raises(InvalidEvent) as caught:
        parse_traceparent(value)
    assert caught.value.attribute == "traceparent"
    assert "00-<32 lowercase hex trace id" in str(caught.value)  # says what was expected


def test_a_later_version_is_read_by_its_first_four_fields():
    assert parse_traceparent("01-" + VALID[3:] + "-what-comes-later").trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"


@given(st.text(max_size=80))
def test_any_text_is_read_or_refused_as_invalid_never_anything_else(value):
    try:
        context = parse_traceparent(value)
    except InvalidEvent as exc:
        assert exc.attribute == "traceparent"
    else:
        assert value[3:55] == context.traceparent[3:]


def test_a_new_context_is_a_valid_sampled_one_and_never_repeats():
    contexts = {new_context() for _ in range(100)}
    assert len({c.trace_id for c in contexts}) == 100
    for context in contexts:
        assert parse_traceparent(context.traceparent) == context and context.sampled


def test_a_child_keeps_the_trace_and_flags_with_a_new_parent_id():
    parent = parse_traceparent(VALID.replace("-01", "-00"))
    child = parent.child()
    assert (child.trace_id, child.flags) == (parent.trace_id, "00")
    assert child.span_id != parent.span_id and parse_traceparent(child.traceparent) == child


@pytest.mark.parametrize("value", [
    "", "congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", " a=1 , b=2 ", "a=1,,b=2",
    "tenant@system=value", "a-b_c*d/e=x y", ",".join(f"k{i}=v" for i in range(MAX_TRACESTATE_MEMBERS)),
])
def test_a_valid_tracestate_is_kept_as_it_is(value):
    assert check_tracestate(value) == value


@pytest.mark.parametrize("value, why", [
    ("congo", "no ="), ("Congo=1", "an upper-case key"), ("a=1,a=2", "a key twice"), ("a=b=c", "= in a value"),
    ("a=x\ty", "a tab in a value"), ("a=\u00e9", "not ASCII"), ("1a@=x", "an empty system id"),
    (",".join(f"k{i}=v" for i in range(MAX_TRACESTATE_MEMBERS + 1)), "too many members"),
    ("a=" + "x" * MAX_TRACESTATE_CHARS, "too long"), (5, "not a string"),
])
def test_a_malformed_tracestate_is_refused_naming_it(value, why):
    with pytest.raises(InvalidEvent) as caught:
        check_tracestate(value)
    assert caught.value.attribute == "tracestate", why
    assert "key=value" in str(caught.value)


@given(st.text(max_size=600))
def test_any_text_is_a_tracestate_or_refused_as_invalid(value):
    try:
        assert check_tracestate(value) == value
    except InvalidEvent as exc:
        assert exc.attribute == "tracestate"


def test_the_attributes_of_an_event_are_checked_only_when_present():
    check_trace_attributes({"id": "1"})
    check_trace_attributes({"traceparent": VALID, "tracestate": "a=1"})
    with pytest.raises(InvalidEvent, match="tracestate"):
        check_trace_attributes({"traceparent": VALID, "tracestate": "A=1"})


@given(st.one_of(st.text(max_size=60), st.builds(lambda t, s, f: f"00-{t}-{s}-{f}", hex_string(32), hex_string(16),
                                                 hex_string(2))))
def test_the_quick_check_agrees_with_the_parser(value):
    try:
        parse_traceparent(value)
        refused = False
    except InvalidEvent:
        refused = True
    try:
        check_traceparent(value)
        assert not refused
    except InvalidEvent:
        assert refused


def test_a_new_traceparent_is_a_new_sampled_trace():
    values = {new_traceparent() for _ in range(100)}
    assert len(values) == 100 and all(parse_traceparent(v).sampled for v in values)


def test_a_plain_messages_w3c_headers_become_its_context_when_valid():
    assert message_context({"Traceparent": VALID, "tracestate": "a=1"}) == {"traceparent": VALID, "tracestate": "a=1"}
    assert message_context({"traceparent": VALID.encode()}) == {"traceparent": VALID}
    assert message_context({"traceparent": "junk", "tracestate": "a=1"}) == {}
    assert message_context({"tracestate": "a=1"}) == {}


def test_forked_processes_draw_different_ids():
    """Ids come from `random`, whose state a fork copies: replicas forked from one zygote must
    still not hand out the same span ids (the random module reseeds a forked child)."""
    read, write = os.pipe()
    children = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            os.write(write, (new_span_id() + new_traceparent() + "\n").encode())
            os._exit(0)
        children.append(pid)
    os.close(write)
    for pid in children:
        os.waitpid(pid, 0)
    with os.fdopen(read) as lines:
        drawn = lines.read().split()
    assert len(drawn) == 2 and drawn[0] != drawn[1]
