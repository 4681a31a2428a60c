"""How deliveries and dead letters are written into JetStream messages.

A message body is one line of JSON saying what JetStream itself does not keep (the
delivery's id and when it was stored; a dead letter's subscription, attempts, reason,
status, error and time), then the event as the SQLite log stores it: its attributes as
compact JSON, and, when it has data, a newline and the payload bytes exactly as they
came. (Compact JSON never holds a raw newline, so the first two newlines split it.)
Headers are left to JetStream (`Nats-Msg-Id`): error texts may hold anything.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from fmesh.contracts import DeadLetter
from fmesh.events import Event, from_record_or_stub, to_record


def new_delivery_id() -> str:
    """An id for a delivery that stays the same while it is retried, released or moved."""
    return uuid.uuid4().hex


def encode(meta: dict[str, Any], event: Event) -> bytes:
    attributes, payload = to_record(event)
    head = orjson.dumps(meta) + b"\n" + attributes
    return head if payload is None else head + b"\n" + payload


def decode(body: bytes, where: str) -> tuple[dict[str, Any], Event, str | None]:
    """The meta line, the event, and why the event could not be read (None when it could)."""
    meta_line, _, rest = body.partition(b"\n")
    try:
        meta = orjson.loads(meta_line)
    except orjson.JSONDecodeError:
        meta, rest = {}, body
    attributes, newline, payload = rest.partition(b"\n")
    event, undecodable = from_record_or_stub(attributes, payload if newline else None, where)
    return meta if isinstance(meta, dict) else {}, event, undecodable


def encode_dead_letter(letter: DeadLetter) -> bytes:
    return encode({"subscription": letter.subscription, "attempts": letter.attempts, "reason": letter.reason,
                   "status": letter.status, "error": letter.error, "failed_at": letter.failed_at}, letter.event)


def decode_dead_letter(body: bytes, sequence: int, subscription: str) -> DeadLetter:
    meta, event, _ = decode(body, f"dead letter {sequence}")
    return DeadLetter(sequence, meta.get("subscription", subscription), event, int(meta.get("attempts", 0)),
                      str(meta.get("reason", "")), meta.get("status"), meta.get("error"),
                      float(meta.get("failed_at", 0.0)))
