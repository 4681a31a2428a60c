"""Routing cost: publish rate with 1,000 subscriptions against the rate with 10, in one run.

Each subscription filters on an exact event type (as Knative triggers mostly do), some
also on the source; every event matches exactly one subscription, so the store does
the same work in both cases and only routing differs. Publishes go through the real
broker into SQLite. Also reports the bare router's matches/s and, for contrast, a
mesh whose 1,000 filters are all `prefix` filters (which no index can help).

    python bench/routing.py [--events 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fmesh.broker.broker import Broker  # noqa: E402
from fmesh.broker.filters import compile_shorthand  # noqa: E402
from fmesh.broker.sqlite_log import SqliteEventLog  # noqa: E402

from bench.common import emit  # noqa: E402
from fmesh.events import new_event  # noqa: E402


def subscriptions(count: int, kind: str) -> dict:
    if kind == "prefix":
        return {f"s{i}": compile_shorthand({"type": {"prefix": f"com.shop.t{i}."}}) for i in range(count)}
    return {f"s{i}": compile_shorthand({"type": f"com.shop.t{i}", **({"source": "/web"} if i % 2 else {})})
            for i in range(count)}


def events(count: int, subs: int, kind: str) -> list:
    suffix = "." if kind == "prefix" else ""
    return [new_event(f"com.shop.t{i % subs}{suffix}", "/web", {"i": i}) for i in range(count)]


async def publish_rate(subs: int, kind: str, count: int, folder: Path) -> float:
    log = SqliteEventLog(folder / f"{kind}-{subs}.db")
    await log.open()
    broker = Broker(log)
    for name, f in subscriptions(subs, kind).items():
        broker.subscribe(name, f)
    batch = events(count, subs, kind)
    started = time.perf_counter()
    await asyncio.gather(*(broker.publish(batch[i:i + 50]) for i in range(0, count, 50)))
    elapsed = time.perf_counter() - started
    stored = sum([await log.pending(name) for name in list(broker.router._filters)])
    await log.close()
    assert stored == count, f"stored {stored} of {count}"
    return count / elapsed


def match_rate(subs: int, kind: str, count: int = 50_000) -> float:
    broker = Broker(None)  # type: ignore[arg-type] - routing only
    for name, f in subscriptions(subs, kind).items():
        broker.router.set(name, f)
    batch = [e.attributes for e in events(count, subs, kind)]
    started = time.perf_counter()
    for attributes in batch:
        broker.router.match(attributes)
    return count / (time.perf_counter() - started)


def median_of(runs: int, measure) -> float:  # type: ignore[no-untyped-def]
    return statistics.median(measure() for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rates: dict[int, list[float]] = {10: [], 1000: []}
    for _ in range(args.runs):  # interleaved, so drift hits both alike
        for subs in rates:
            with tempfile.TemporaryDirectory() as tmp:
                rates[subs].append(asyncio.run(publish_rate(subs, "exact", args.events, Path(tmp))))
    rates = {subs: statistics.median(values) for subs, values in rates.items()}  # type: ignore[misc]
    match = {subs: median_of(args.runs, lambda s=subs: match_rate(s, "exact")) for subs in (10, 1000)}
    prefix = {subs: median_of(args.runs, lambda s=subs: match_rate(s, "prefix", 10_000)) for subs in (10, 1000)}
    emit({"bench": "routing", "events": args.events,
          "publish_per_s_10_subscriptions": round(rates[10]), "publish_per_s_1000_subscriptions": round(rates[1000]),
          "ratio_1000_over_10": round(rates[1000] / rates[10], 3),
          "router_matches_per_s": {"10": round(match[10]), "1000": round(match[1000]),
                                   "ratio": round(match[1000] / match[10], 3)},
          "unindexable_prefix_filters_matches_per_s": {"10": round(prefix[10]), "1000": round(prefix[1000]),
                                                       "ratio": round(prefix[1000] / prefix[10], 3)}})


if __name__ == "__main__":
    main()
