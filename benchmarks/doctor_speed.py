"""``tfprod doctor`` speed: quick and full mode on the quickstart CNN and the sample digits.

The quickstart's setup: ``small_cnn((32, 32, 1), 10)`` on ``load_digits(32)`` (1,438 training
images) in batches of 32. Each repeat builds a fresh model (so every ``tf.function`` is traced
again, as on a first run) and times :func:`tfprod.doctor.diagnose`; the table gives the median
and the slowest check group. Targets (the issue): quick < 20 s, full < 90 s on 2 cores.

Usage::

    .venv/bin/python benchmarks/doctor_speed.py --repeats 3 --json /tmp/doctor_speed.json

Run it on an idle machine (``--max-load 0.8`` waits for one): the figures are wall-clock times
on a shared CPU, so the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from rich.console import Console
from rich.table import Table

from machine import add_machine_args, machine_info, wait_for_load
from tfprod import runtime

console = Console(width=140)
TARGETS = {"quick": 20.0, "full": 90.0}






def run_once(mode: str, x, y, seed: int, plot_dir: str) -> dict:
    import keras
    import tensorflow as tf

    from tfprod.doctor import diagnose
    from tfprod.models import small_cnn

    keras.utils.set_random_seed(seed)
    model = small_cnn((32, 32, 1), 10)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(y), seed=seed).batch(32)
    start = time.perf_counter()
    report = diagnose(model, dataset, mode=mode,
                      plot=os.path.join(plot_dir, f"lr_{mode}_{seed}.png") if mode == "full"
                      else None)
    seconds = time.perf_counter() - start
    groups = {k: v for k, v in report.seconds.items() if k != "total"}
    slowest = max(groups, key=groups.get)
    return {"seconds": seconds, "errors": len(report.errors), "findings": len(report.findings),
            "slowest": slowest, "slowest_seconds": groups[slowest],
            "load": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode (median)")
    parser.add_argument("--modes", default="quick,full", help="comma-separated subset")
    add_machine_args(parser)
    args = parser.parse_args(argv)
    runtime.configure(verbose=False)
    from tfprod.data import load_digits

    (x, y), _ = load_digits(32)
    x = x.astype("float32")
    info = machine_info()
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as plots:
        run_once("quick", x[:256], y[:256], 99, plots)  # TensorFlow start-up, not timed
        for mode in args.modes.split(","):
            if args.max_load is not None:
                wait_for_load(args.max_load, args.max_wait, console)
            results[mode] = []
            for i in range(args.repeats):
                r = run_once(mode, x, y, i, plots)
                results[mode].append(r)
                console.print(f"{mode} run {i + 1}: {r['seconds']:.1f} s (load {r['load']:.2f})",
                              style="dim")
    table = Table(title=f"tfprod doctor on small_cnn + digits ({len(y)} images, batch 32), "
                        f"median of {args.repeats}", title_justify="left")
    for c in ("mode", "median s", "min s", "max s", "target s", "slowest check (s)",
              "errors found", "load avg", "verdict"):
        table.add_column(c)
    rows = []
    for mode, runs in results.items():
        seconds = [r["seconds"] for r in runs]
        median = statistics.median(seconds)
        row = {"mode": mode, "median": median, "min": min(seconds), "max": max(seconds),
               "target": TARGETS[mode], "slowest": runs[0]["slowest"],
               "slowest_seconds": statistics.median(r["slowest_seconds"] for r in runs),
               "errors": max(r["errors"] for r in runs),
               "load": statistics.mean(r["load"] for r in runs),
               "pass": median < TARGETS[mode]}
        rows.append(row)
        table.add_row(mode, f"{median:.1f}", f"{min(seconds):.1f}", f"{max(seconds):.1f}",
                      f"< {TARGETS[mode]:.0f}", f"{row['slowest']} ({row['slowest_seconds']:.1f})",
                      str(row["errors"]), f"{row['load']:.2f}",
                      "[green]PASS[/]" if row["pass"] else "[red]FAIL[/]")
    console.print(table)
    info["load_average_end"] = list(os.getloadavg())
    console.print(f"machine: {info}", style="dim")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "rows": rows, "runs": results},
                                        indent=2))
        console.print(f"wrote {args.json}")
    return 0 if all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
