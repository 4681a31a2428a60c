"""Runs every benchmark of issue 5 in one go, prints the table of ratios and writes
bench/results.json (each figure: fmesh value, baseline value, ratio, goal, met).

`bench/run` installs what this needs and then runs it; run it directly only when wrk
and bench/.peer-venv are already there. Each benchmark that starts servers runs in its
own child process or `with` block, so Ctrl-C (or SIGTERM) stops them all.

    python bench/report.py [--quick] [--only ingress pipelines coldstart routing footprint trail]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import PYTHON  # noqa: E402

RESULTS = ROOT / "bench" / "results.json"


@dataclass
class Figure:
    name: str
    fmesh: float
    baseline: float
    unit: str
    ratio: float
    goal: str          # ">= 0.5", "<= 1.0", or "-" for a figure reported without a goal
    met: bool | None   # None without a goal
    note: str = ""


def meets(ratio: float, goal: str) -> bool:
    op, value = goal.split()
    return ratio >= float(value) if op == ">=" else ratio <= float(value)


def shown_ratio(f: Figure) -> str:
    """Two decimals, or three where two would round a missed goal onto its bound (0.797 is not 0.80)."""
    short = f"{f.ratio:.2f}"
    if f.goal != "-" and f.met is not None and meets(float(short), f.goal) != meets(f.ratio, f.goal):
        return f"{f.ratio:.3f}"
    return short


def figure(name: str, fmesh: float, baseline: float, unit: str, goal: str, ratio: float | None = None,
           note: str = "", extra_condition: bool = True) -> Figure:
    ratio = round(fmesh / baseline if ratio is None else ratio, 3)
    return Figure(name, fmesh, baseline, unit, ratio, goal, meets(ratio, goal) and extra_condition, note)


# -- running the benchmarks ------------------------------------------------------------------

def run_json(script: str, *args: str, timeout: float = 300) -> dict:
    """Run a bench script in a child process and parse the JSON it prints.

    On Ctrl-C the child (in our process group) gets SIGINT too; we wait for it to stop
    its servers instead of killing it, which would leave them running.
    """
    process = subprocess.Popen([PYTHON, str(ROOT / "bench" / script), *args], stdout=subprocess.PIPE, text=True,
                               preexec_fn=default_sigint)
    try:
        out, _ = process.communicate(timeout=timeout)
    except BaseException:
        stop_child(process)
        raise
    if process.returncode != 0:
        raise RuntimeError(f"bench/{script} failed with exit code {process.returncode}")
    return json.loads(out)


def default_sigint() -> None:
    """In the child before exec: Ctrl-C must reach it even if we were started with SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop_child(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def ingress(quick: bool) -> tuple[list[Figure], dict]:
    result = run_json("ingress.py", "--seconds", "3", "--runs", "4" if quick else "6")
    refused = result["fmesh_non_2xx"] + result["bare_non_2xx"]
    note = "2xx only: durable 202 vs bare ASGI 202" + (f"; {refused} non-2xx answers" if refused else "") + (
        "" if result["none_lost"] else "; FEWER STORED THAN ACCEPTED")
    return [figure("ingress", result["fmesh_rps_median"], result["bare_asgi_rps_median"], "events/s", ">= 0.7",
                   ratio=result["ratio"], note=note + "; ratio: median of the runs' paired ratios, rates: medians",
                   extra_condition=result["none_lost"]),
            Figure("ingress CPU per event", result["fmesh_cpu_us_per_event"], result["bare_cpu_us_per_request"], "us",
                   result["cpu_ratio"], "-", None, "informational: the mesh's processes until delivered (accept, "
                   "store, deliver) vs the bare app's per 202; ratio: median of the runs' paired ratios")], result


def pipelines(quick: bool) -> tuple[list[Figure], dict]:
    """Sustained end to end, the drained burst and latency share one fmesh and one peer pipeline
    (started once); every measurement waits until the side before it has drained and is idle."""
    from bench import e2e, latency, sustained
    from bench.peer.pipeline import PeerPipeline

    with tempfile.TemporaryDirectory() as tmp, e2e.FmeshPipeline(Path(tmp) / "fmesh") as fmesh, \
            PeerPipeline(Path(tmp) / "peer", f"{e2e.NOOP}:handle") as peer:
        runs = 4 if quick else 6  # the noisiest figures: more runs; even, so each side goes first as often
        bursts = e2e.measure(fmesh, peer, runs=3, seconds=3 if quick else 5, connections=64)
        steady = sustained.measure(fmesh, peer, seconds=5 if quick else 30, steps=3 if quick else 8,
                                   seeds={"fmesh": bursts["fmesh_per_s_median"], "peer": bursts["peer_per_s_median"]})
        rate = (steady["peer_per_s"] or bursts["peer_per_s_median"]) / 2  # half the peer's sustained rate
        delays = latency.measure(fmesh, peer, rate, runs=runs, seconds=3 if quick else 5)
    return pipeline_figures(bursts, steady, delays), {"e2e": bursts, "sustained": steady, "latency": delays}


def pipeline_figures(bursts: dict, steady: dict, delays: dict) -> list[Figure]:
    refused = steady["refused"]
    sustained_note = (f"highest offered rate with accepted >= 0.99x offered, delivered/s during the load >= 0.9x "
                      f"accepted/s, drained < 2 s; {steady['seconds']:.0f} s steps; refused (non-2xx) in all steps: "
                      f"fmesh {refused['fmesh']}, peer {refused['peer']}; "
                      + "; ".join(f"{side}: {len(steady[side]['steps'])} steps, "
                                  + ("found" if steady[side]["found_to_precision"] else "NOT found")
                                  + f" to {steady['precision']:.0%}" for side in ("fmesh", "peer")))
    complete = "" if delays["all_complete"] else "; INCOMPLETE RUNS (see details.pipelines.latency.problems)"
    return [
        figure("end to end (sustained)", steady["fmesh_per_s"], steady["peer_per_s"], "events/s", ">= 2.5",
               ratio=steady["ratio"] or 0.0, note=sustained_note + ("" if steady["both_found"] else
                                                                    "; NO PASSING RATE FOUND FOR ONE SIDE"),
               extra_condition=steady["both_found"]),
        Figure("end to end (drained burst)", bursts["fmesh_per_s_median"], bursts["peer_per_s_median"], "events/s",
               bursts["ratio"], "-", None,
               "informational: wrk burst, handled/s from its start until drained (counts the drain after the load)"
               + ("" if bursts["all_drained"] else "; NOT ALL DRAINED")),
        figure("latency p99", delays["fmesh_p99_ms"], delays["peer_p99_ms"], "ms", "<= 1.0", ratio=delays["ratio_p99"],
               note=f"at {delays['rate_per_s']}/s fixed rate (half the peer's sustained rate); ratio: median of "
                    f"the runs' paired ratios, values: medians{complete}",
               extra_condition=delays["all_complete"]),
        Figure("latency p50", delays["fmesh_p50_ms"], delays["peer_p50_ms"], "ms", delays["ratio_p50"], "-",
               None, "informational" + complete),
        Figure("CPU per event", delays["fmesh_cpu_ms_per_event"], delays["peer_cpu_ms_per_event"], "ms",
               delays["ratio_cpu"], "-", None,
               "informational: all processes of each pipeline, at the latency run's rate; ratio: median of the "
               "runs' paired ratios"),
    ]


def coldstart(quick: bool) -> tuple[list[Figure], dict]:
    result = run_json("coldstart.py", "--runs", "10" if quick else "15", timeout=900)
    figures = []
    for name, label in (("typical", "typical"), ("heavy", "heavy imports")):
        handler = result["handlers"][name]
        fresh = handler["fresh_interpreter_ms_median"]
        figures += [
            figure(f"cold start: {label}", handler["cold_start_ms_median"], fresh, "ms", "<= 0.1",
                   note=f"forked from the function's template vs fresh python importing {handler['handler']}; "
                        f"template {handler['template_cost_pss_mib']} MiB PSS"),
            Figure(f"first cold start: {label}", handler["new_template_ms_median"], fresh, "ms",
                   handler["new_template_over_fresh_interpreter"], "-", None,
                   f"informational: makes the template (without templates: "
                   f"{handler['no_template_over_fresh_interpreter']:.2f})")]
    return figures, result


def routing(quick: bool) -> tuple[list[Figure], dict]:
    result = run_json("routing.py", "--runs", "3" if quick else "5", "--events", "10000" if quick else "20000")
    return [figure(f"routing: {dialect}", rates["publish_per_s_1000_subscriptions"],
                   rates["publish_per_s_10_subscriptions"], "events/s", ">= 0.8",
                   ratio=rates["ratio_1000_over_10"],
                   note=f"publish rate, 1,000 vs 10 {dialect} subscriptions; ratio: median of the runs' "
                        f"paired ratios, rates: medians")
            for dialect, rates in result["dialects"].items()], result


def footprint(quick: bool) -> tuple[list[Figure], dict]:
    result = run_json("footprint.py", "--functions", "100")
    clean = result["no_function_processes"]
    note = ("100 idle functions, the mesh once its idle zygote has gone (--zygote-idle, set short) vs bare uvicorn"
            + ("" if clean else "; FUNCTION PROCESSES RUNNING"))
    return [figure("footprint RSS", result["fmesh_rss_mib"], result["bare_rss_mib"], "MiB", "<= 2",
                   ratio=result["ratio_rss"], note=note, extra_condition=clean),
            Figure("footprint PSS", result["fmesh_pss_mib"], result["bare_pss_mib"], "MiB", result["ratio_pss"],
                   "-", None, "informational"),
            Figure("footprint RSS, zygote running", result["fmesh_with_zygote_rss_mib"], result["bare_rss_mib"],
                   "MiB", result["ratio_rss_with_zygote"], "-", None,
                   "informational: the same mesh before its zygote went (as it is for --zygote-idle after the "
                   "last replica and template)")], result


def trail(quick: bool) -> tuple[list[Figure], dict]:
    result = run_json("trail.py", "--seconds", "3" if quick else "5", "--runs", "4" if quick else "8", timeout=900)
    note = ("with the event trail vs --trail-retention 0; ratio: median of the runs' paired ratios, rates: medians"
            + ("" if result["all_drained"] else "; NOT ALL DRAINED"))
    return [figure("trail: ingress", result["ingress_per_s_trail_median"], result["ingress_per_s_no_trail_median"],
                   "events/s", ">= 0.9", ratio=result["ingress_ratio"], note=note),
            figure("trail: end to end", result["e2e_per_s_trail_median"], result["e2e_per_s_no_trail_median"],
                   "events/s", ">= 0.9", ratio=result["e2e_ratio"], note=note,
                   extra_condition=result["all_drained"])], result


BENCHMARKS = {"ingress": ingress, "pipelines": pipelines, "coldstart": coldstart, "routing": routing,
              "footprint": footprint, "trail": trail}


# -- the table ----------------------------------------------------------------------------------

def number(value: float, unit: str) -> str:
    if unit == "events/s":
        return f"{value:,.0f}/s"
    if unit == "ms":
        return f"{value:,.{1 if value >= 1 else 3}f} ms"
    return f"{value:,.1f} {unit}"


def table(figures: list[Figure]) -> str:
    rows = [("figure", "fmesh", "baseline", "ratio", "goal", "met")]
    for f in figures:
        met = "-" if f.met is None else ("yes" if f.met else "NO")
        rows.append((f.name, number(f.fmesh, f.unit), number(f.baseline, f.unit), shown_ratio(f), f.goal, met))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up as Ctrl-C does: every `with` block stops its servers


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="shorter measurements (a smoke test)")
    parser.add_argument("--only", nargs="*", choices=list(BENCHMARKS), help="run only these")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    try:
        run(args.only or list(BENCHMARKS), args.quick)
    except KeyboardInterrupt:
        print("\ninterrupted: every server this run started has been stopped", file=sys.stderr)
        sys.exit(130)


def run(names: list[str], quick: bool) -> None:
    started = time.monotonic()
    load_before = os.getloadavg()  # other work on the machine: the figures' noise
    figures: list[Figure] = []
    details: dict = {}
    failed = []
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        step = time.monotonic()
        try:
            found, detail = BENCHMARKS[name](quick)
        except Exception as error:  # one broken benchmark must not discard the others' figures
            failed.append(name)
            details[name] = {"failed": f"{type(error).__name__}: {error}"}
            print(f"  {name} FAILED after {time.monotonic() - step:.0f}s: {error}", file=sys.stderr, flush=True)
            continue
        figures += found
        details[name] = detail
        print(f"  {name} took {time.monotonic() - step:.0f}s", file=sys.stderr, flush=True)
    elapsed = time.monotonic() - started
    RESULTS.write_text(json.dumps({
        "figures": [asdict(f) for f in figures], "details": details, "seconds": round(elapsed),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg()},
    }, indent=2) + "\n")
    print(table(figures))
    print(f"\n{len(figures)} figures in {elapsed:.0f}s; details in {RESULTS.relative_to(ROOT)}")
    if failed:
        print(f"failed: {', '.join(failed)} (its error is in the details)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
