"""Sustained end-to-end throughput: the highest offered rate a pipeline keeps pace with,
for fmesh and for the peer pipeline (bench/peer/), measured the same way in one run.

A step offers a fixed rate for `--seconds` with bench/latency.py's open-loop generator
(in its own process; an event it could not send by the end of the window is dropped,
not sent late) and passes when all three hold:

- accepted >= 0.99 x offered: 2xx answers within the window; a refusal (429, 503, any
  non-2xx) or an event not sent for want of a free connection means the pipeline did not
  take that rate, so admission control cannot make a rate pass by refusing most of it;
- delivered events per second during the window >= 0.9 x accepted per second (the handled
  count read when the load starts and when its window ends): delivery kept pace;
- the backlog at the end drains in under 2 s (from the end of the window until every
  accepted event was handled and acked).

The search: the first rate is a fraction of `seed` (bench/e2e.py's drained rate from a
short wrk burst); after a failing step the next is just under what that step actually
accepted and delivered per second (or half its rate, if higher), until a step passes; then
it bisects between the
highest passing rate and the lowest failing rate above it. A side is done once those two
are within `--precision` (5 %) of each other, or after `--steps` steps (8): both sides are
found to the same precision, however far below its seed a side's first pass came (a side
whose delivery starves under an overload keeps a slow pace there, and its search restarts
far down). The figure is the highest passing rate. fmesh and peer steps alternate while
both search, so drift hits both alike, and each step starts only once both sides are
drained and idle (asserted).

    python bench/sustained.py [--seconds 30] [--steps 8] [--precision 0.05]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import emit, median  # noqa: E402

ACCEPTED_SHARE = 0.99   # of offered
DELIVERED_SHARE = 0.9   # of accepted, per second, during the window
DRAIN_LIMIT_S = 2.0
FIRST_STEP_SHARE = 0.9  # of the seed (the drained rate of a wrk burst)
BELOW_FAILED = 0.95     # after a failing step: this share of the pace it kept
PRECISION = 0.05        # a side is found once its lowest failing rate is within this share above its highest passing


def step(pipeline, rate: float, seconds: float, drain_timeout: float = 180) -> dict:  # type: ignore[no-untyped-def]
    """One step at `rate`: offer it for `seconds`, wait until drained and idle, judge it."""
    from bench.e2e import wait_handled, wait_idle
    from bench.latency import offer

    backlog = pipeline.backlog()
    if backlog:
        raise RuntimeError(f"{type(pipeline).__name__} still has {backlog} events to deliver before a step")
    before = pipeline.handled()
    load = offer(pipeline, rate, seconds, window=True)
    handled = wait_handled(pipeline, before + load["ok"], drain_timeout, interval=0.05) - before
    drain_s = time.monotonic() - load["ended_at"]
    idle = wait_idle(pipeline)  # raises unless drained: the other side is never measured beside a backlog
    accepted_per_s = load["ok"] / seconds
    delivered_per_s = (load["handled_at_end"] - load["handled_at_start"]) / load["window_s"]
    checks = {"accepted": load["ok"] >= ACCEPTED_SHARE * load["offered"],
              "kept_pace": delivered_per_s >= DELIVERED_SHARE * accepted_per_s,
              "drained": handled >= load["ok"] and drain_s < DRAIN_LIMIT_S}
    return {"rate": round(rate), "passed": all(checks.values()),
            "failed_checks": [name for name, ok in checks.items() if not ok],
            "offered": load["offered"], "accepted": load["ok"], "refused": load["failed"], "non_2xx": load["non_2xx"],
            "unsent": load["unsent"], "unanswered": load["unanswered"],
            "accepted_per_s": round(accepted_per_s), "delivered_per_s_during": round(delivered_per_s),
            "drain_s": round(drain_s, 2), "handled": handled, "send_lag_p99_ms": load["send_lag_p99_ms"],
            "idle_after_s": idle["idle_after_s"]}


def next_rate(steps: list[dict], hint: float) -> float:
    """The next rate to try, from the steps so far (and `hint` to start with)."""
    if not steps:
        return FIRST_STEP_SHARE * hint
    passed = [s["rate"] for s in steps if s["passed"]]
    low = max(passed, default=None)
    failed = [s["rate"] for s in steps if not s["passed"] and (low is None or s["rate"] > low)]
    high = min(failed, default=None)
    if high is None:  # everything passed so far: go higher
        return 1.3 * low  # type: ignore[operator]
    if low is None:  # nothing passed yet: just under the pace the lowest failing step kept, or
        # half its rate when that pace is far lower (a starved delivery keeps a slower pace
        # under an overload than it would at a rate it can take)
        worst = next(s for s in steps if s["rate"] == high)
        kept = min(worst["accepted_per_s"], worst["delivered_per_s_during"])
        return min(max(BELOW_FAILED * kept, 0.5 * high), 0.9 * high)
    return (low + high) / 2


def is_found(steps: list[dict], precision: float) -> bool:
    """Whether the highest passing rate and the lowest failing one above it are close enough."""
    side = summary(steps)
    return bool(side["rate"]) and side["lowest_failing"] is not None and \
        side["lowest_failing"] <= (1 + precision) * side["rate"]


def search(pipelines: dict, seeds: dict[str, float], seconds: float, steps: int,
           precision: float = PRECISION) -> dict:
    """Alternating steps for each pipeline until each is found to `precision` (or has had
    `steps` steps); per pipeline its steps and the highest passing rate."""
    tried: dict[str, list[dict]] = {name: [] for name in pipelines}
    for _ in range(steps):
        for name, pipeline in pipelines.items():
            if not is_found(tried[name], precision):
                tried[name].append(step(pipeline, next_rate(tried[name], seeds[name]), seconds))
    return {name: {**summary(runs), "found_to_precision": is_found(runs, precision)} for name, runs in tried.items()}


def summary(steps: list[dict]) -> dict:
    passed = [s for s in steps if s["passed"]]
    best = max(passed, key=lambda s: s["rate"], default=None)
    above = [s["rate"] for s in steps if not s["passed"] and (best is None or s["rate"] > best["rate"])]
    return {"rate": best["rate"] if best else 0, "lowest_failing": min(above, default=None),
            "delivered_per_s_at_rate": best["delivered_per_s_during"] if best else 0, "steps": steps}


def measure(fmesh, peer, seconds: float, steps: int, seeds: dict[str, float],  # type: ignore[no-untyped-def]
            precision: float = PRECISION) -> dict:
    sides = search({"fmesh": fmesh, "peer": peer}, seeds, seconds, steps, precision)
    fmesh_rate, peer_rate = sides["fmesh"]["rate"], sides["peer"]["rate"]
    return {"bench": "sustained", "event_bytes": 1024, "seconds": seconds, "steps": steps, "precision": precision,
            "criteria": {"accepted_of_offered": ACCEPTED_SHARE, "delivered_of_accepted": DELIVERED_SHARE,
                         "drain_limit_s": DRAIN_LIMIT_S},
            "fmesh_per_s": fmesh_rate, "peer_per_s": peer_rate,
            "ratio": round(fmesh_rate / peer_rate, 3) if peer_rate else None,
            "both_found": bool(fmesh_rate and peer_rate),
            "refused": {name: sum(s["refused"] for s in side["steps"]) for name, side in sides.items()},
            "seeds": {name: round(rate) for name, rate in seeds.items()}, **sides}


def main() -> None:
    from bench.e2e import NOOP, FmeshPipeline, drained_rate, wait_idle
    from bench.peer.pipeline import PeerPipeline

    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--steps", type=int, default=8, help="most steps per side")
    parser.add_argument("--precision", type=float, default=PRECISION)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, FmeshPipeline(Path(tmp) / "fmesh") as fmesh, \
            PeerPipeline(Path(tmp) / "peer", f"{NOOP}:handle") as peer:
        seeds = {}
        for name, pipeline in (("fmesh", fmesh), ("peer", peer)):
            seeds[name] = median([drained_rate(pipeline, 3, 64)["rate"] for _ in range(2)])
            wait_idle(pipeline)
        result = measure(fmesh, peer, args.seconds, args.steps, seeds, args.precision)
    emit(result)


if __name__ == "__main__":
    main()
