"""Cold start: from an event reaching a function at zero replicas to its reply being
published, against the same function warm, and against a fresh `python` that starts
and imports the same handler (the cold-start baseline). One run, medians and ratios.

Runs the mesh in-process (SQLite store, zygote launcher) and watches the reply
subscription directly, so no HTTP client or second function adds to the figure.

    python bench/coldstart.py [--runs 15]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fmesh.broker.filters import compile_shorthand  # noqa: E402
from fmesh.deploy.server import build, deploy_local  # noqa: E402

from bench.common import emit  # noqa: E402
from fmesh.events import new_event  # noqa: E402
from fmesh.settings import NodeSettings  # noqa: E402

DEFAULT_HANDLER = ROOT / "bench" / "functions" / "typical"
MANIFEST = """
functions:
  hello:
    handler: {folder}/handler.py:handle
    on: [{{type: bench.cold}}]
    scale: {{max: 1, idle_timeout: 0s}}
"""


async def round_trip(node, replies) -> float:
    """Seconds from publishing one event to its reply being stored."""
    started = time.perf_counter()
    await node.broker.publish([new_event("bench.cold", "/bench", {"name": "bench"})])
    while True:
        claimed = await replies.claim(10)
        if claimed.deliveries:
            await replies.ack([d.id for d in claimed.deliveries])
            return time.perf_counter() - started
        await replies.wait(5)


async def wait_for_zero(node) -> None:
    pool = node.runtime.functions["hello"].pool
    while pool.replicas:
        await asyncio.sleep(0.01)


async def measure_mesh(runs: int, data_dir: Path, folder: Path) -> tuple[list[float], list[float]]:
    node, control, _ = build(NodeSettings(data_dir=data_dir))
    await node.start()
    try:
        manifest = data_dir / "fmesh.yaml"
        manifest.write_text(MANIFEST.format(folder=folder))
        await deploy_local(control, manifest)
        replies = node.broker.subscribe("bench-replies", compile_shorthand({"type": "bench.cold.reply"}))
        await round_trip(node, replies)  # the first start also warms the zygote's page cache
        cold = []
        for _ in range(runs):
            await wait_for_zero(node)
            await asyncio.sleep(0.05)
            cold.append(await round_trip(node, replies))
        manifest.write_text(MANIFEST.format(folder=folder).replace("idle_timeout: 0s", "idle_timeout: 60s"))
        await deploy_local(control, manifest)
        await round_trip(node, replies)
        warm = [await round_trip(node, replies) for _ in range(runs * 4)]
        return cold, warm
    finally:
        await node.stop()


def measure_fresh_interpreter(runs: int, folder: Path) -> list[float]:
    """A new interpreter that imports the handler, as a runner without a zygote must."""
    code = f"import sys; sys.path.insert(0, {str(folder)!r}); import handler"
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - started)
    return times


def ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--handler", type=Path, default=DEFAULT_HANDLER,
                        help="folder with handler.py:handle (default: a typical pydantic + cloudevents handler)")
    args = parser.parse_args()
    folder = args.handler.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        cold, warm = asyncio.run(measure_mesh(args.runs, Path(tmp), folder))
    fresh = measure_fresh_interpreter(args.runs, folder)
    shown = folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder
    emit({"bench": "coldstart", "runs": args.runs, "handler": str(shown),
          "cold_start_ms_median": ms(cold), "warm_ms_median": ms(warm),
          "fresh_interpreter_ms_median": ms(fresh),
          "cold_over_fresh_interpreter": round(statistics.median(cold) / statistics.median(fresh), 3),
          "cold_over_warm": round(statistics.median(cold) / statistics.median(warm), 1),
          "cold_ms_all": [round(c * 1000, 1) for c in cold]})


if __name__ == "__main__":
    main()
