"""Throughput of compiled CESQL filters: evaluations per second, as JSON.

Usage: ``python bench/cesql_eval.py [--seconds 0.5]``

``measure`` is reusable to compare other filter implementations (for example
the broker's exact/prefix filters) on the same event::

    from bench.cesql_eval import EVENT, measure
    rate = measure(my_filter.matches, EVENT)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

from fmesh.broker.cesql import compile_expression
from fmesh.broker.filters import compile_dialect, compile_filters

EXPRESSION = "type LIKE 'com.shop.%' AND source = '/web' AND INT(amount) > 100 AND EXISTS region"

#: A realistic order event as the broker hands it to filters: context attributes
#: and extensions by lower-case name (extensions often arrive as strings).
EVENT: Mapping[str, Any] = {
    "specversion": "1.0",
    "id": "5b0e8a4e-3c1f-4f57-9a53-0f3c2d8b9e11",
    "source": "/web",
    "type": "com.shop.order.created",
    "subject": "order/42",
    "time": "2024-05-14T09:31:07.512Z",
    "datacontenttype": "application/json",
    "amount": "250",
    "region": "eu-west",
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
}

# The same condition both ways, for the comparison: CESQL against Knative's dialects.
COMPARABLE = "type LIKE 'com.shop.%' AND source = '/web' AND region = 'eu-west'"
COMPARABLE_FILTERS = [{"prefix": {"type": "com.shop."}}, {"exact": {"source": "/web", "region": "eu-west"}}]

RUNS = 5
_BATCH = 1000


Filter = Callable[[Mapping[str, Any]], Any]


def _run_once(fn: Filter, event: Mapping[str, Any], seconds: float) -> float:
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(_BATCH):
            fn(event)
        calls += _BATCH
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - start)


def measure(fn: Filter, event: Mapping[str, Any], seconds: float = 0.5) -> float:
    """Median, over 5 runs of about ``seconds`` each, of ``fn(event)`` calls per second."""
    return statistics.median(_run_once(fn, event, seconds) for _ in range(RUNS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="duration of each of the 5 runs")
    args = parser.parse_args()

    compile_start = time.perf_counter()
    expression = compile_expression(EXPRESSION)
    compile_seconds = time.perf_counter() - compile_start
    assert expression.matches(EVENT), "the benchmark event must match the expression"

    comparable = compile_expression(COMPARABLE)
    dialects = compile_filters(COMPARABLE_FILTERS)
    as_broker_filter = compile_dialect({"cesql": COMPARABLE}, "cesql")  # with error reporting, as routed
    assert comparable.matches(EVENT) and dialects(EVENT) and as_broker_filter(EVENT)
    cesql_rate = measure(comparable.matches, EVENT, args.seconds)
    dialect_rate = measure(dialects, EVENT, args.seconds)
    report = {
        "comparison": {
            "condition": COMPARABLE,
            "filters": COMPARABLE_FILTERS,
            "cesql_evals_per_second": round(cesql_rate),
            "cesql_as_broker_filter_per_second": round(measure(as_broker_filter, EVENT, args.seconds)),
            "exact_prefix_filters_per_second": round(dialect_rate),
            "cesql_over_filters": round(cesql_rate / dialect_rate, 3),
        },
        "expression": EXPRESSION,
        "runs": RUNS,
        "seconds_per_run": args.seconds,
        "matches_per_second": round(measure(expression.matches, EVENT, args.seconds)),
        "evaluate_per_second": round(measure(expression.evaluate, EVENT, args.seconds)),
        "compile_microseconds": round(compile_seconds * 1e6, 1),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
