"""fmesh's own log lines (not the functions' output, which runtime/logs.py keeps).

Every part logs through `get("fmesh.<part>")`, with what a line concerns as keywords:

    log = meshlog.get("fmesh.runtime")
    log.warning("event dead-lettered", event_id=event.id, function="resize", attempts=3)

Those keywords become keys of the JSON object (`--log-format json`: one object per line,
with `time`, `level`, `logger` and `message`), or `key=value` after the message on a
terminal (`--log-format text`). Both are built on the stdlib `logging` module, so the
lines of libraries (uvicorn's) can go through the same formatter.

Values may come from outside (an event id is whatever a producer sent): JSON escapes them,
and the text format shows control characters as `\\xNN`, so no value can start a line of
its own or drive the terminal.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

from fmesh.terminal import escape_controls

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")
ROOT = "fmesh"
_FIELDS = "fmesh_fields"   # the LogRecord attribute that carries a line's keywords
_PLAIN = "fmesh_plain"     # set: the line is shown as written in text (the startup lines)
_PREFIX = {logging.DEBUG: "fmesh: debug: ", logging.INFO: "fmesh: ", logging.WARNING: "warning: ",
           logging.ERROR: "error: ", logging.CRITICAL: "error: "}
_context: dict[str, Any] = {}  # keys on every JSON line of this process (the node's id)
_handler: logging.Handler | None = None  # what `configure` set up last


class MeshLogger:
    """A stdlib logger that takes a line's fields as keywords."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def debug(self, message: str, **fields: Any) -> None:
        self._log(logging.DEBUG, message, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._log(logging.INFO, message, fields)

    def warning(self, message: str, **fields: Any) -> None:
        self._log(logging.WARNING, message, fields)

    def error(self, message: str, exc_info: BaseException | None = None, **fields: Any) -> None:
        """An error; with `exc_info`, its traceback goes along (a field in JSON)."""
        self._log(logging.ERROR, message, fields, exc_info)

    def say(self, line: str) -> None:
        """A startup or shutdown line: as written on a terminal, an info line in JSON."""
        if self.logger.isEnabledFor(logging.INFO):
            self.logger.info(line, extra={_PLAIN: True}, stacklevel=2)

    def _log(self, level: int, message: str, fields: dict[str, Any], exc_info: BaseException | None = None) -> None:
        if self.logger.isEnabledFor(level):
            self.logger.log(level, message, extra={_FIELDS: fields}, exc_info=exc_info, stacklevel=3)


def get(name: str) -> MeshLogger:
    """The logger of one part: `fmesh.broker`, `fmesh.runtime`, `fmesh.triggers`, `fmesh.deploy`."""
    return MeshLogger(logging.getLogger(name))


def set_context(**fields: Any) -> None:
    """Keys every JSON line of this process carries from now on (e.g. `node`)."""
    _context.update(fields)


def configure(format: str = "text", level: str = "info", stream: IO[str] | None = None) -> logging.Handler:
    """Write the process's log lines to `stream` (stderr) in `format`: the `fmesh` loggers'
    from `level` up, libraries' (asyncio, nats, aiokafka) from warnings up, so that in JSON
    every line is JSON. Calling it again replaces what an earlier call set up."""
    global _handler
    if format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {format!r}")
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger(ROOT).setLevel(level.upper())
    _handler = handler
    return handler


def fields_of(record: logging.LogRecord) -> Mapping[str, Any]:
    return getattr(record, _FIELDS, None) or {}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC, ms), level, logger, message, the
    line's fields, and `exception` (the traceback as one string) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"time": rfc3339(record.created), "level": record.levelname.lower(),
                                "logger": record.name, "message": record.getMessage().strip()}
        line.update(_context)
        for key, value in fields_of(record).items():
            if key not in line and value is not None:
                line[key] = _jsonable(value)
        if record.exc_info and record.exc_info[1] is not None:
            line["exception"] = "".join(traceback.format_exception(record.exc_info[1])).rstrip()
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, default=str)  # ensure_ascii: no character can break the line


class TextFormatter(logging.Formatter):
    """`fmesh: message key=value ...` (`warning: `, `error: ` by level), one line per
    record but for the traceback of a bug."""

    def format(self, record: logging.LogRecord) -> str:
        message = one_line(record.getMessage())
        if getattr(record, _PLAIN, False):
            return message
        text = _PREFIX.get(record.levelno, "fmesh: ") + message
        pairs = " ".join(f"{key}={text_value(value)}" for key, value in fields_of(record).items() if value is not None)
        if pairs:
            text += " " + pairs
        if record.exc_info and record.exc_info[1] is not None:
            text += "\n" + "".join(traceback.format_exception(record.exc_info[1])).rstrip()
        return text


def rfc3339(created: float) -> str:
    """`2026-12-01T20:07:09.123Z`."""
    return datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(created * 1000) % 1000:03d}Z"


def one_line(text: str) -> str:
    r"""`text` safe on one terminal line: controls (newlines too) as `\xNN`, line separators as `\uNNNN`."""
    return escape_controls(text).replace("\n", "\\n").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def text_value(value: Any) -> str:
    """A field's value after `key=`: bare when it is one plain word, else quoted and escaped."""
    text = value if isinstance(value, str) else str(value)
    if text and all(c.isprintable() and not c.isspace() and c not in '"=\\' for c in text):
        return text
    return '"' + one_line(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'  # backslashes first: unambiguous


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)


class Throttle:
    """At most one line per `every` seconds about one recurring trouble; `due()` says
    whether this one may be logged, `skipped` how many were not since the last."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.skipped = 0
        self._last = float("-inf")

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.every:
            self.skipped += 1
            return False
        self._last = now
        return True

    def take_skipped(self) -> int | None:
        """How many lines were skipped since the last one (None for none), and start again."""
        skipped, self.skipped = self.skipped, 0
        return skipped or None


class QuietRepeats(logging.Filter):
    """A line a client can cause at will (uvicorn's "Invalid HTTP request received.") at most
    once per `every` seconds for each message, then how many like it were left out: a flood of
    bad requests must not become a flood of log lines."""

    KEPT = 1000  # messages tracked at most: they are a library's fixed wordings, but bounded all the same

    def __init__(self, every: float = 10.0) -> None:
        super().__init__()
        self.every = every
        self._throttles: dict[tuple[str, str], Throttle] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        throttle = self._throttles.get(key)
        if throttle is None:
            if len(self._throttles) >= self.KEPT:
                self._throttles.clear()
            throttle = self._throttles[key] = Throttle(self.every)
        if not throttle.due():
            return False
        if skipped := throttle.take_skipped():
            record.msg = f"{record.msg} ({skipped} more like it since the last line, not logged)"
        return True
