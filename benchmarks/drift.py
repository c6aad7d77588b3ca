"""Drift of wide tables: tfprod.monitor vs Evidently's DataDriftPreset, side by side.

Reference and current of N rows x C float32 columns, standard normal; the current shifted by
0.2 std in 3 columns. Each (tool, rows, columns) runs in its own process, so its peak RSS is its
own; the data itself (2 x N x C x 4 bytes) is reported beside it. Both tools must find exactly the
3 shifted columns.

    python benchmarks/drift.py --rows 100000,1000000 --cols 100 --tools tfprod,evidently
    python benchmarks/drift.py --rows 100000,1000000,10000000 --cols 100 --tools tfprod
    python benchmarks/drift.py --rows 1000000 --cols 10,100,300 --tools tfprod
    python benchmarks/drift.py --rows 1000000,3000000,10000000 --cols 100 \
        --tools tfprod,tfprod-exact                        # fine histograms vs sorted merge
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

SHIFTED = 3


def make_data(rows: int, cols: int, seed: int = 0) -> tuple[dict, dict]:
    """Column-wise float32 arrays (as a columnar file would give them)."""
    rng = np.random.default_rng(seed)
    ref = {f"c{i}": rng.standard_normal(rows, dtype=np.float32) for i in range(cols)}
    cur = {f"c{i}": rng.standard_normal(rows, dtype=np.float32) for i in range(cols)}
    for i in range(SHIFTED):
        cur[f"c{i}"] += np.float32(0.2)
    return ref, cur


def run_tfprod(ref: dict, cur: dict, multivariate: str) -> list[str]:
    from tfprod.monitor import detect_drift

    return detect_drift(ref, cur, multivariate=multivariate).drifted


def run_evidently(ref: dict, cur: dict) -> list[str]:
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    snapshot = Report([DataDriftPreset()]).run(pd.DataFrame(cur), pd.DataFrame(ref))
    drifted = []
    for m in snapshot.dict()["metrics"]:
        config = m["config"]
        if config.get("type", "").endswith("ValueDrift") and m["value"] >= config["threshold"]:
            drifted.append(config["column"])
    return drifted


def peak_rss() -> int:
    """This process's peak resident set (VmHWM: reset by exec, unlike ru_maxrss)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _run(tool: str, ref: dict, cur: dict) -> list[str]:
    if tool == "evidently":
        return run_evidently(ref, cur)
    if tool == "tfprod-exact":  # the sorted merge at every size, not the fine histograms
        from tfprod.monitor import univariate

        univariate.EXACT_MAX_ROWS = 2 ** 62
    return run_tfprod(ref, cur, "domain_classifier" if tool == "tfprod+joint" else "none")


def one(tool: str, rows: int, cols: int, repeats: int) -> dict:
    """Runs in the child: time each repeat, report peak RSS."""
    _run(tool, *make_data(2000, 4, seed=1))  # imports and first-call costs, not timed
    ref, cur = make_data(rows, cols)
    data_rss = peak_rss()
    times, drifted = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        drifted = _run(tool, ref, cur)
        times.append(time.perf_counter() - t)
    peak = peak_rss()
    return {"tool": tool, "rows": rows, "cols": cols, "times": times,
            "median_s": float(np.median(times)), "peak_rss": peak, "rss_after_data": data_rss,
            "load_average": os.getloadavg(),
            "data_bytes": 2 * rows * cols * 4, "drifted": sorted(drifted),
            "correct": sorted(drifted) == sorted(f"c{i}" for i in range(SHIFTED))}


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from machine import add_machine_args, machine_info, wait_for_load

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000,1000000")
    parser.add_argument("--cols", default="100")
    parser.add_argument("--tools", default="tfprod,tfprod+joint,evidently",
                        help="tfprod (per-feature, the same job as Evidently's preset), "
                        "tfprod-exact (the same, sorted merge above 1M rows too), "
                        "tfprod+joint (plus the domain classifier), evidently")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--evidently-repeats", type=int, default=1)
    parser.add_argument("--evidently-max-rows", type=int, default=1_000_000)
    parser.add_argument("--one", nargs=4, metavar=("TOOL", "ROWS", "COLS", "REPEATS"),
                        help=argparse.SUPPRESS)
    add_machine_args(parser)
    args = parser.parse_args()
    if args.one:
        tool, rows, cols, repeats = args.one
        print(json.dumps(one(tool, int(rows), int(cols), int(repeats))))
        return
    console = Console(width=120)
    load = wait_for_load(args.max_load, args.max_wait, console) if args.max_load else None
    load_start = os.getloadavg()
    results = []
    for rows in map(int, args.rows.split(",")):
        for cols in map(int, args.cols.split(",")):
            for tool in args.tools.split(","):
                if tool == "evidently" and rows > args.evidently_max_rows:
                    continue
                repeats = args.evidently_repeats if tool == "evidently" else args.repeats
                console.print(f"[dim]{tool} {rows:,} x {cols} ...[/]")
                out = subprocess.run([sys.executable, __file__, "--one", tool, str(rows),
                                      str(cols), str(repeats)], capture_output=True, text=True)
                if out.returncode:
                    console.print(f"[red]{tool} failed[/]: {out.stderr[-2000:]}")
                    continue
                results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    table = Table(title="drift: 0.2 std shift in 3 columns, N rows x C float32 each side")
    for c in ("tool", "rows", "cols", "median s (min-max)", "x evidently", "peak RSS GB",
              "after data GB", "found 3"):
        table.add_column(c)
    for r in results:
        base = next((e for e in results if e["tool"] == "evidently" and e["rows"] == r["rows"]
                     and e["cols"] == r["cols"]), None)
        ratio = f"{base['median_s'] / r['median_s']:.0f}x" if base and r is not base else "-"
        table.add_row(r["tool"], f"{r['rows']:,}", str(r["cols"]),
                      f"{r['median_s']:.2f} ({min(r['times']):.2f}-{max(r['times']):.2f})",
                      ratio, f"{r['peak_rss'] / 1e9:.2f}", f"{r['rss_after_data'] / 1e9:.2f}",
                      "yes" if r["correct"] else f"no: {r['drifted']}")
    console.print(table)
    info = machine_info()  # imports TensorFlow: only after the children ran
    console.print(f"load average at start: {load_start}; machine: {info}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "load_before": load,
                                         "results": results}, indent=1))


if __name__ == "__main__":
    main()
