"""The mesh's own log lines: one JSON object a line, or text safe on a terminal."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Callable

import pytest

from fmesh import meshlog

HOSTILE = 'ev "1"\n{"level": "error"}\r\x1b[2J\u202e\u2028x'


@pytest.fixture
def lines():
    """Configure the fmesh loggers for one test; yields a function that gives what they wrote."""
    root, fmesh = logging.getLogger(), logging.getLogger(meshlog.ROOT)
    before = (list(root.handlers), root.level, fmesh.level)
    out = io.StringIO()

    def written(format: str = "json", level: str = "info") -> Callable[[], list[str]]:
        meshlog.configure(format, level, out)
        return lambda: out.getvalue().splitlines()

    yield written
    root.handlers[:], root.level = before[:2]
    fmesh.setLevel(before[2])
    meshlog._handler = None


def test_a_json_line_has_time_level_logger_message_and_the_fields(lines):
    read = lines("json")
    meshlog.get("fmesh.runtime").warning("event dead-lettered", event_id="e1", function="resize", attempts=3,
                                         dead_letter=None)
    [line] = read()
    record = json.loads(line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record.pop("time"))
    record.pop("node", None)  # a Node made in this process may have set it
    assert record == {"level": "warning", "logger": "fmesh.runtime", "message": "event dead-lettered",
                      "event_id": "e1", "function": "resize", "attempts": 3}


def test_hostile_values_stay_on_one_json_line_and_come_back_as_sent(lines):
    read = lines("json")
    meshlog.get("fmesh.runtime").warning(HOSTILE, event_id=HOSTILE, level="forged", extra=object())
    [line] = read()
    assert line.isascii() and "\x1b" not in line
    record = json.loads(line)
    assert record["event_id"] == HOSTILE and record["message"] == HOSTILE.strip()
    assert record["level"] == "warning"  # a field cannot forge the line's own keys
    assert record["extra"].startswith("<object object")


def test_an_exception_is_one_field_not_lines_of_traceback(lines):
    read = lines("json")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError as exc:
        meshlog.get("fmesh.broker").error("it broke", exc_info=exc, subscription="function:a")
    [line] = read()
    record = json.loads(line)
    assert record["exception"].startswith("Traceback") and "ValueError: boom\nsecond line" in record["exception"]
    assert record["subscription"] == "function:a"


def test_library_warnings_go_through_the_same_formatter_and_their_chatter_does_not(lines):
    read = lines("json", "debug")
    library = logging.getLogger("nats.test")
    library.info("connected")
    library.warning("Invalid HTTP request received: %s", "x")
    meshlog.get("fmesh.runtime").debug("shown")
    assert [json.loads(line)["message"] for line in read()] == ["Invalid HTTP request received: x", "shown"]


def test_text_keeps_the_wording_and_appends_fields_as_key_value(lines):
    read = lines("text")
    log = meshlog.get("fmesh.deploy")
    log.info("stopped on SIGINT after 0.3s")
    log.warning("could not extend claims", subscription="function:a", error="store down: busy", deliveries=2)
    log.error("no function named 'x'")
    log.say("  mesh id mesh-1; store memory://")
    assert read() == ["fmesh: stopped on SIGINT after 0.3s",
                      'warning: could not extend claims subscription=function:a error="store down: busy" deliveries=2',
                      "error: no function named 'x'",
                      "  mesh id mesh-1; store memory://"]


def test_text_shows_hostile_values_escaped_on_one_line(lines):
    read = lines("text")
    meshlog.get("fmesh.runtime").warning(HOSTILE, event_id=HOSTILE, function="a")
    [line] = read()
    assert not any(c in line for c in "\x1b\r\u202e\u2028"), repr(line)
    assert line.startswith('warning: ev "1"\\n{"level": "error"}\\x0d\\x1b[2J\\u202e\\u2028x event_id="ev \\"1\\"\\n')
    assert line.endswith(" function=a")


def test_a_backslash_in_a_value_cannot_pass_for_an_escape(lines):
    read = lines("text")
    meshlog.get("fmesh.runtime").warning("x", event_id="a\\x1b \x1b")
    assert read() == ['warning: x event_id="a\\\\x1b \\x1b"']


def test_levels_below_the_one_set_are_not_written(lines):
    read = lines("json", "warning")
    log = meshlog.get("fmesh.triggers")
    log.info("not shown")
    log.warning("shown")
    assert [json.loads(line)["message"] for line in read()] == ["shown"]


def test_an_unknown_format_or_level_is_refused():
    with pytest.raises(ValueError, match="log format must be one of text, json"):
        meshlog.configure("yaml")
    with pytest.raises(ValueError, match="log level must be one of"):
        meshlog.configure("json", "loud")


def test_a_throttle_lets_one_line_through_per_period_and_counts_the_rest():
    throttle = meshlog.Throttle(60)
    assert [throttle.due() for _ in range(4)] == [True, False, False, False]
    assert throttle.take_skipped() == 3 and throttle.take_skipped() is None


def test_a_repeated_line_is_let_through_once_per_interval_with_how_many_were_left_out():
    quiet = meshlog.QuietRepeats(every=0.05)

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, message, None, None)

    assert quiet.filter(record("Invalid HTTP request received."))
    let_through = time.monotonic()
    assert not any(quiet.filter(record("Invalid HTTP request received.")) for _ in range(49))
    assert quiet.filter(record("another message"))  # each message has its own interval
    while time.monotonic() < let_through + 0.06:  # the interval itself is what is waited for
        time.sleep(0.01)
    late = record("Invalid HTTP request received.")
    assert quiet.filter(late)
    assert late.getMessage().startswith("Invalid HTTP request received. (49 more like it since the last line")


def test_uvicorn_lines_go_through_the_mesh_formatter_once_per_interval(capsys):
    """A client sending malformed HTTP used to make an unformatted line per request, unbounded."""
    import logging.config

    from fmesh.deploy.http_config import uvicorn_log_config

    logging.config.dictConfig(uvicorn_log_config("text"))
    try:
        for _ in range(100):
            logging.getLogger("uvicorn.error").warning("Invalid HTTP request received.")
    finally:
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).handlers.clear()
    assert capsys.readouterr().err.splitlines() == ["warning: Invalid HTTP request received."]
