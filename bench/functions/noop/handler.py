"""The no-op handler that bench/e2e.py and bench/latency.py run in both pipelines.

fmesh runs it as a function; the peer's FastStream subscriber imports this same file
and awaits it. It is async so that neither side needs a thread to call it.

When BENCH_LATENCY_FILE is set and the event carries the `benchsent` extension (the
wall-clock second the load generator meant to send it), it appends `now - benchsent`
as one float64 to that file: one small O_APPEND write, atomic even from several
processes, cheap enough not to colour the latency it records.
"""

import os
import struct
import time

_PATH = os.environ.get("BENCH_LATENCY_FILE")
_FD = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if _PATH else None
_PACK = struct.Struct("d").pack


def _extension(event, name):
    # fmesh hands the handler a Mapping; the cloudevents SDK's CloudEvent has get_extension.
    get = getattr(event, "get", None)
    return get(name) if get is not None else event.get_extension(name)


async def handle(event):
    if _FD is None:
        return None
    sent = _extension(event, "benchsent")
    if sent is not None:
        os.write(_FD, _PACK(time.time() - float(sent)))
    return None
