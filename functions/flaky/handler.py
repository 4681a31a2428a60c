"""flaky: fails the first FAIL_TIMES attempts at each event, then succeeds.

Attempts are counted per event id in a file, so the count survives replica restarts. The
file is in this function's own folder (as the mesh unpacked it), so two meshes, or two users
of one machine, do not share (or trip over) one count; FLAKY_STATE puts it elsewhere.
"""

import json
import os
from pathlib import Path

FAIL_TIMES = int(os.environ.get("FAIL_TIMES", "2"))
STATE = Path(os.environ.get("FLAKY_STATE") or Path(__file__).resolve().parent / ".attempts.json")


def handle(event):
    attempts = json.loads(STATE.read_text()) if STATE.exists() else {}
    attempts[event["id"]] = attempts.get(event["id"], 0) + 1
    STATE.write_text(json.dumps(attempts))
    if attempts[event["id"]] <= FAIL_TIMES:
        raise RuntimeError(f"flaky: failing attempt {attempts[event['id']]} of {event['id']} on purpose")
    print(f"flaky: {event['id']} succeeded on attempt {attempts[event['id']]}")
    return None
