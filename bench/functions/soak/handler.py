"""Handlers of bench/soak.py: one that replies, one that fails each event's first attempt,
one at the end of the reply chain. The flaky one remembers a bounded number of ids, so a
long soak measures the mesh's memory, not this file's."""

from collections import OrderedDict

REMEMBERED = 50_000
_seen: OrderedDict[str, None] = OrderedDict()


def reply(event):
    return {"order": event["id"], "ok": True}       # becomes a <type>.reply event


def flaky(event):
    if event["id"] in _seen:
        del _seen[event["id"]]
        return None
    _seen[event["id"]] = None
    if len(_seen) > REMEMBERED:
        _seen.popitem(last=False)
    raise RuntimeError(f"soak: failing the first attempt at {event['id']} on purpose")


def tally(event):
    return None
