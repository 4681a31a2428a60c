"""What the event trail costs: the ingress rate and the end-to-end rate of a mesh with the
trail (the default) against the same mesh with `--trail-retention 0`, in one run.

Both meshes run the bench's warm no-op function (bench/e2e.py's FmeshPipeline). Each run
measures both, in ABBA order, and the ratios are the medians of the runs' ratios (see
bench/common.py). The end-to-end rate is bench/e2e.py's: events handled and acked per second, from the start
of the load until drained. Prints JSON with the medians, each pair's ratios and the
ratios trail/no trail (the goal: >= 0.9 for both).

    python bench/trail.py [--seconds 5] [--runs 4] [--connections 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import emit, in_turn, median, median_ratio, pair_ratios  # noqa: E402
from bench.e2e import FmeshPipeline, drained_rate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"trail": [], "no_trail": []}
    with tempfile.TemporaryDirectory() as tmp, FmeshPipeline(Path(tmp) / "trail") as on, \
            FmeshPipeline(Path(tmp) / "off", extra=("--trail-retention", "0")) as off:
        for pipeline in (on, off):
            drained_rate(pipeline, 1, args.connections)  # warm-up, not counted
        pair = (("trail", on), ("no_trail", off))
        for run in range(args.runs):
            for name, pipeline in in_turn(run, pair):
                runs[name].append(drained_rate(pipeline, args.seconds, args.connections))
    emit(summarize(runs))


def summarize(runs: dict[str, list[dict]]) -> dict:
    result: dict = {"bench": "trail", "event_bytes": 1024, "runs": runs}
    for figure, key in (("ingress", "ingress_rps"), ("e2e", "rate")):
        with_trail, without = [r[key] for r in runs["trail"]], [r[key] for r in runs["no_trail"]]
        result[f"{figure}_per_s_trail_median"] = round(median(with_trail))
        result[f"{figure}_per_s_no_trail_median"] = round(median(without))
        result[f"{figure}_pair_ratios"] = pair_ratios(with_trail, without)
        result[f"{figure}_ratio"] = median_ratio(with_trail, without)
    result["all_drained"] = all(r["drained"] for side in runs.values() for r in side)
    return result


if __name__ == "__main__":
    main()
