"""Cold start: from an event reaching a function at zero replicas to its reply being
published, against the same function warm, and against a fresh `python` that starts
and imports the same handler (the cold-start baseline). One run, medians and ratios.

Two handlers: a typical one (pydantic and the cloudevents SDK, which the zygote
preloads) and one with heavy imports (httpx, PyYAML, a 1 MB table built at import),
each measured three ways:

- cold: forked from the function's template, which has loaded the handler already (the
  template outlives scale-to-zero: this is every cold start but the first);
- new template: the first cold start of a function (or version), which makes the
  template: it loads the handler, then forks the replica from itself;
- no template (`--template-idle 0`): forked from the zygote, loading the handler.

And the memory a template costs: its RSS, PSS and private (USS) memory while idle, and
how much the PSS of zygote and template together grew when it was made.

Runs the mesh in-process (SQLite store) and watches the reply subscription directly, so
no HTTP client or second function adds to the figure.

    python bench/coldstart.py [--runs 15] [--handler bench/functions/typical ...]
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
from bench.footprint import children, memory_kib  # noqa: E402
from fmesh.events import new_event  # noqa: E402
from fmesh.settings import NodeSettings  # noqa: E402

HANDLERS = [ROOT / "bench" / "functions" / "typical", ROOT / "bench" / "functions" / "heavy"]
MANIFEST = """
functions:
  hello:
    handler: {folder}/handler.py:handle
    on: [{{type: bench.cold}}]
    scale: {{max: 1, idle_timeout: {idle}}}
"""
KEEP, EVERY_TIME, NEVER = 300.0, 0.001, 0.0   # --template-idle: keep the template, make one each time, none


async def round_trip(node, replies) -> float:
    """Seconds from publishing one event to its reply being stored."""
    started = time.perf_counter()
    await node.broker.publish([new_event("bench.cold", "/bench", {"name": "bench"})])
    while True:
        deliveries = await replies.claim(10, 5)  # waits for the reply (up to 5 s a round)
        if deliveries:
            await replies.ack([d.id for d in deliveries])
            return time.perf_counter() - started


async def settle(node, template_idle: float) -> None:
    """Back at zero replicas, no replica process left, and the template gone too unless kept."""
    pool = node.runtime.functions["hello"].pool
    zygote = node.runtime.zygote._process.pid
    while pool.replicas or (children(zygote) if template_idle != KEEP
                            else any(children(t) for t in children(zygote))):
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)


async def measure_mesh(runs: int, data_dir: Path, folder: Path, template_idle: float) -> dict:
    node, control, _ = build(NodeSettings(data_dir=data_dir, template_idle=template_idle))
    await node.start()
    try:
        manifest = data_dir / "fmesh.yaml"
        manifest.write_text(MANIFEST.format(folder=folder, idle="0s"))
        await deploy_local(control, manifest)
        replies = node.broker.subscribe("bench-replies", compile_shorthand({"type": "bench.cold.reply"}))
        zygote = node.runtime.zygote._process.pid
        await settle(node, NEVER)
        zygote_alone = memory_kib(zygote)
        await round_trip(node, replies)  # the first start also warms the page cache (and makes the template)
        cold = []
        for _ in range(runs):
            await settle(node, template_idle)
            cold.append(await round_trip(node, replies))
        result = {"cold": cold}
        if template_idle == KEEP:
            await settle(node, KEEP)
            result["memory"] = template_memory(zygote, zygote_alone)
            manifest.write_text(MANIFEST.format(folder=folder, idle="60s"))
            await deploy_local(control, manifest)
            await round_trip(node, replies)
            result["warm"] = [await round_trip(node, replies) for _ in range(runs * 4)]
        return result
    finally:
        await node.stop()


def template_memory(zygote: int, zygote_alone: dict[str, int]) -> dict[str, float]:
    """The idle template's memory, and what zygote + template take over the zygote alone."""
    (template,) = children(zygote)
    mine, now = memory_kib(template), memory_kib(zygote)
    return {"template_rss_mib": mib(mine["rss"]), "template_pss_mib": mib(mine["pss"]),
            "template_uss_mib": mib(mine["uss"]),
            "template_cost_pss_mib": mib(mine["pss"] + now["pss"] - zygote_alone["pss"])}


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


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


def measure(folder: Path, runs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        kept, every_time, never = (asyncio.run(measure_mesh(runs, Path(tmp) / str(idle), folder, idle))
                                   for idle in (KEEP, EVERY_TIME, NEVER))
    fresh = statistics.median(measure_fresh_interpreter(runs, folder))
    cold, warm = kept["cold"], kept["warm"]
    shown = folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder
    return {"handler": str(shown), "cold_start_ms_median": ms(cold), "warm_ms_median": ms(warm),
            "fresh_interpreter_ms_median": round(fresh * 1000, 2),
            "cold_over_fresh_interpreter": round(statistics.median(cold) / fresh, 3),
            "cold_over_warm": round(statistics.median(cold) / statistics.median(warm), 1),
            "new_template_ms_median": ms(every_time["cold"]),
            "new_template_over_fresh_interpreter": round(statistics.median(every_time["cold"]) / fresh, 3),
            "no_template_ms_median": ms(never["cold"]),
            "no_template_over_fresh_interpreter": round(statistics.median(never["cold"]) / fresh, 3),
            **kept["memory"], "cold_ms_all": [round(c * 1000, 1) for c in cold]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--handler", type=Path, action="append",
                        help="a folder with handler.py:handle (default: bench/functions/typical and heavy)")
    args = parser.parse_args()
    results = {folder.name: measure(folder.resolve(), args.runs) for folder in args.handler or HANDLERS}
    emit({"bench": "coldstart", "runs": args.runs, "handlers": results})


if __name__ == "__main__":
    main()
