"""Routing cost: publish rate with 1,000 subscriptions against the rate with 10, in one run,
for each filter dialect the router indexes.

- exact: each subscription filters on an exact event type (as Knative triggers mostly
  do), every other one also on the source;
- prefix: `type: {prefix: com.shop.tN.}`; suffix: `type: {suffix: .tN.created}`;
- cesql: a mix of exact filters, `type = 'com.shop.tN' AND source = '/web'` and
  `type LIKE 'com.shop.tN.%' AND source LIKE '/w%'`.

Every event matches exactly one subscription, so the store writes the same rows in both
cases. Its index on the subscription spreads 1,000 subscriptions' rows over more pages,
though: with routing taken out (rows appended straight to the log) the 1,000 side runs at
0.89x the 10 side, and that is part of every dialect's figure, as it is of a real mesh's.
Publishes go through the real broker into SQLite, with the
garbage collector set as the mesh sets it (frozen after start, fmesh/collector.py). In
each run the 10 and the 1,000 side publish in alternating chunks of 1,000 events, so the
machine's swings in speed (a quarter, from one tenth of a second to the next, here) land
on both; the figure is the median of the runs' ratios. Also reports the bare router's
matches/s per dialect.

    python bench/routing.py [--events 20000] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fmesh.broker.broker import Broker  # noqa: E402
from fmesh.broker.filters import Filter, compile_shorthand  # noqa: E402
from fmesh.broker.sqlite_log import SqliteEventLog  # noqa: E402

from bench.common import emit, in_turn, median, median_ratio, pair_ratios  # noqa: E402
from fmesh.collector import tune_for_serving  # noqa: E402
from fmesh.events import new_event  # noqa: E402

DIALECTS = ("exact", "prefix", "suffix", "cesql")


def subscription(i: int, kind: str) -> Filter:
    if kind == "prefix":
        return compile_shorthand({"type": {"prefix": f"com.shop.t{i}."}})
    if kind == "suffix":
        return compile_shorthand({"type": {"suffix": f".t{i}.created"}})
    if kind == "cesql" and i % 3 == 1:
        return compile_shorthand({"cesql": f"type = 'com.shop.t{i}' AND source = '/web'"})
    if kind == "cesql" and i % 3 == 2:
        return compile_shorthand({"cesql": f"type LIKE 'com.shop.t{i}.%' AND source LIKE '/w%'"})
    return compile_shorthand({"type": f"com.shop.t{i}", **({"source": "/web"} if i % 2 else {})})


def subscriptions(count: int, kind: str) -> dict[str, Filter]:
    return {f"s{i}": subscription(i, kind) for i in range(count)}


def event_type(i: int, kind: str) -> str:
    """The type only subscription `i` of `kind` matches."""
    dotted = kind in ("prefix", "suffix") or (kind == "cesql" and i % 3 == 2)
    return f"com.shop.t{i}.created" if dotted else f"com.shop.t{i}"


def events(count: int, subs: int, kind: str) -> list:
    return [new_event(event_type(i % subs, kind), "/web", {"i": i}) for i in range(count)]


SIZES = (10, 1000)
CHUNK = 1_000   # events a side publishes before the other side's turn


async def started_broker(subs: int, kind: str, folder: Path) -> tuple[Broker, SqliteEventLog, list[str]]:
    log = SqliteEventLog(folder / f"{kind}-{subs}.db")
    await log.open()
    broker = Broker(log)
    routed = subscriptions(subs, kind)
    for name, f in routed.items():
        broker.subscribe(name, f)
    return broker, log, list(routed)


async def publish_chunk(broker: Broker, chunk: list) -> float:
    """Seconds to publish `chunk` as concurrent batches of 50 (one group commit a turn)."""
    started = time.perf_counter()
    await asyncio.gather(*(broker.publish(chunk[i:i + 50]) for i in range(0, len(chunk), 50)))
    return time.perf_counter() - started


async def publish_rates(kind: str, count: int, folder: Path) -> dict[int, float]:
    """Publish rate with 10 and with 1,000 subscriptions, their chunks alternating.

    The machine's speed swings by a quarter from one tenth of a second to the next, so two
    runs back to back still differ by that much; chunks of ~10 ms taken in turns (ABBA)
    put the same swings on both sides.
    """
    sides = {subs: await started_broker(subs, kind, folder) for subs in SIZES}
    gc.collect()
    gc.freeze()  # as the mesh does once started: what is set up is not scanned again
    batches = {subs: events(count, subs, kind) for subs in SIZES}  # arrivals, never frozen
    spent = dict.fromkeys(SIZES, 0.0)
    for n, offset in enumerate(range(0, count, CHUNK)):
        for subs in in_turn(n, SIZES):
            spent[subs] += await publish_chunk(sides[subs][0], batches[subs][offset:offset + CHUNK])
    gc.unfreeze()
    for subs, (_, log, names) in sides.items():
        stored = sum([await log.pending(name) for name in names])
        await log.close()
        assert stored == count, f"{kind}, {subs} subscriptions: stored {stored} of {count}"
    return {subs: count / seconds for subs, seconds in spent.items()}


def match_rate(subs: int, kind: str, count: int = 50_000) -> float:
    broker = Broker(None)  # type: ignore[arg-type] - routing only
    for name, f in subscriptions(subs, kind).items():
        broker.router.set(name, f)
    batch = [e.attributes for e in events(count, subs, kind)]
    started = time.perf_counter()
    for attributes in batch:
        broker.router.match(attributes)
    return count / (time.perf_counter() - started)


def check_one_match_each(subs: int, kind: str) -> None:
    """Every event matches exactly one subscription: the store's work is the same at 10 and 1,000."""
    broker = Broker(None)  # type: ignore[arg-type] - routing only
    for name, f in subscriptions(subs, kind).items():
        broker.router.set(name, f)
    for i, event in enumerate(events(subs, subs, kind)):
        assert broker.router.match(event.attributes) == [f"s{i}"], (kind, subs, event.type)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000, help="events per publish run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--matches", type=int, default=50_000, help="events per router match run")
    args = parser.parse_args()
    publish = {kind: {10: [], 1000: []} for kind in DIALECTS}
    match = {kind: {10: [], 1000: []} for kind in DIALECTS}
    for kind in DIALECTS:
        for subs in (10, 1000):
            check_one_match_each(subs, kind)
    tune_for_serving()
    for run in range(args.runs):  # interleaved, so slow drift hits every dialect alike
        for kind in DIALECTS:
            with tempfile.TemporaryDirectory() as tmp:
                for subs, rate in asyncio.run(publish_rates(kind, args.events, Path(tmp))).items():
                    publish[kind][subs].append(rate)
            for subs in in_turn(run, SIZES):
                match[kind][subs].append(match_rate(subs, kind, args.matches))
    rates = {kind: {subs: median(values) for subs, values in by_size.items()}
             for kind, by_size in publish.items()}
    matches = {kind: {subs: median(values) for subs, values in by_size.items()}
               for kind, by_size in match.items()}
    exact = rates["exact"]
    emit({"bench": "routing", "events": args.events, "runs": args.runs,
          "publish_per_s_10_subscriptions": round(exact[10]), "publish_per_s_1000_subscriptions": round(exact[1000]),
          "ratio_1000_over_10": median_ratio(publish["exact"][1000], publish["exact"][10]),
          "router_matches_per_s": {"10": round(matches["exact"][10]), "1000": round(matches["exact"][1000]),
                                   "ratio": median_ratio(match["exact"][1000], match["exact"][10])},
          "dialects": {kind: {"publish_per_s_10_subscriptions": round(rates[kind][10]),
                              "publish_per_s_1000_subscriptions": round(rates[kind][1000]),
                              "ratio_1000_over_10": median_ratio(publish[kind][1000], publish[kind][10]),
                              "pair_ratios": pair_ratios(publish[kind][1000], publish[kind][10]),
                              "router_matches_per_s": {"10": round(matches[kind][10]),
                                                       "1000": round(matches[kind][1000]),
                                                       "ratio": median_ratio(match[kind][1000], match[kind][10])}}
                       for kind in DIALECTS}})


if __name__ == "__main__":
    main()
