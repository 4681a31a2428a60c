"""Sinks: targets that send events out of the mesh, to HTTP, Kafka or NATS.

`open_sink(url, options)` picks the sink by the URL's scheme; a sidecar uses the sink as
its `Target` (call `start()` first and `stop()` at the end).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from fmesh.runtime.sinks.base import Sink, SinkOptions

__all__ = ["Sink", "SinkOptions", "open_sink"]


def open_sink(url: str, options: SinkOptions | Mapping[str, Any] | None = None,
              max_reply_bytes: int | None = None) -> Sink:
    """The sink for `url`: http(s)://..., kafka://host:port/topic or nats://host:port/subject.

    `max_reply_bytes`: the most an HTTP answer may hold (the mesh's event limit; default 1 MiB).
    Raises ValueError naming the URL for any other scheme or a malformed URL, and
    TriggerConfigError (a ValueError) for a secret environment variable that is not set.
    """
    if not isinstance(options, SinkOptions):
        options = SinkOptions.model_validate(options or {})
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        from fmesh.runtime.sinks.http import MAX_ANSWER_BYTES, HttpSink
        return HttpSink(url, options, max_answer_bytes=max_reply_bytes or MAX_ANSWER_BYTES)
    if scheme == "kafka":
        from fmesh.runtime.sinks.kafka import KafkaSink
        return KafkaSink(url, options)
    if scheme == "nats":
        from fmesh.runtime.sinks.nats import NatsSink
        return NatsSink(url, options)
    raise ValueError(f"unsupported sink URL {url!r}: use http(s)://, kafka://host:port/topic "
                     "or nats://host:port/subject")
