"""The peer's consumer: a FastStream app with a durable JetStream consumer. It rebuilds
each CloudEvent with the cloudevents SDK, awaits the same no-op handler fmesh runs,
then acks the message.

The consumer is FastStream's default for a stream, a push consumer: the server keeps
up to 1,000 unacked messages flowing to it, so it never waits for a round trip per
batch. Measured here against pull consumers (batch 100, fetch timeout 0.5 s or 50 ms)
and push with 8 workers, it had the best latency and as good a throughput (a pull
consumer's batch fetch lingers until the batch is full or times out, which shows in
p99 at moderate rates). FastStream warns that a durable push consumer cannot scale
out across instances; there is one instance here. Set PEER_MODE=pull (PEER_BATCH,
PEER_PULL_TIMEOUT) or PEER_WORKERS to compare again.

After each ack it bumps a counter in a small memory-mapped file (PEER_STATS_FILE) that
the benchmark reads, at no cost to this process. The file appears once the consumer is
subscribed: that is the ready signal.

    python subscriber.py   (environment: PEER_NATS_URL, PEER_SUBJECT, PEER_STREAM,
                            PEER_STATS_FILE, PEER_HANDLER=path/to/handler.py:handle)
"""

import importlib.util
import logging
import mmap
import os
import struct
import sys
import warnings

import uvloop
from cloudevents.core.bindings.http import HTTPMessage, from_binary
from cloudevents.core.formats.json import JSONFormat
from faststream import AckPolicy, FastStream
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub

FORMAT = JSONFormat()
SUBJECT = os.environ.get("PEER_SUBJECT", "bench.events")


def load_handler(reference: str):
    path, _, name = reference.rpartition(":")
    spec = importlib.util.spec_from_file_location("bench_handler", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def consumer_options() -> dict:
    options = {}
    if os.environ.get("PEER_MODE") == "pull":
        options["pull_sub"] = PullSub(batch_size=int(os.environ.get("PEER_BATCH", "100")),
                                      timeout=float(os.environ.get("PEER_PULL_TIMEOUT", "0.5")))
    if os.environ.get("PEER_WORKERS"):
        options["max_workers"] = int(os.environ["PEER_WORKERS"])
    return options


class AckCounter:
    """A count of acked events in a memory-mapped file the benchmark reads."""

    def __init__(self, path: str) -> None:
        self._path = path
        with open(path + ".tmp", "wb") as f:
            f.write(bytes(8))
        self._file = open(path + ".tmp", "r+b")
        self._map = mmap.mmap(self._file.fileno(), 8)
        self.count = 0

    def publish(self) -> None:
        os.rename(self._path + ".tmp", self._path)  # atomic: the file appearing means ready

    def add(self) -> None:
        self.count += 1
        struct.pack_into("q", self._map, 0, self.count)


warnings.filterwarnings("ignore", message="The JetStream Push consumer", category=RuntimeWarning)
handle = load_handler(os.environ["PEER_HANDLER"])
counter = AckCounter(os.environ["PEER_STATS_FILE"])
# No per-message INFO logs and no argument validation (apply_types=False): what a user
# tuning for throughput does. PEER_DEBUG=1 brings the logs back.
logger = logging.getLogger("peer") if os.environ.get("PEER_DEBUG") else None
logging.basicConfig(level=logging.INFO)
broker = NatsBroker(os.environ.get("PEER_NATS_URL", "nats://127.0.0.1:4222"), logger=logger, apply_types=False)
app = FastStream(broker, logger=logger)


@broker.subscriber(SUBJECT, stream=JStream(os.environ.get("PEER_STREAM", "BENCH"), subjects=[SUBJECT]),
                   durable="bench", ack_policy=AckPolicy.MANUAL, **consumer_options())
async def on_event(body: bytes) -> None:
    message: NatsMessage = broker.context.get_local("message")  # apply_types=False: no injection
    raw = message.raw_message
    await handle(from_binary(HTTPMessage(raw.headers or {}, raw.data), FORMAT))
    await message.ack()
    counter.add()


@app.after_startup
async def ready() -> None:
    counter.publish()


if __name__ == "__main__":
    sys.exit(uvloop.run(app.run()))
