"""``tfprod doctor`` speed: quick and full mode on the quickstart CNN, and quick mode on the zoo.

The quickstart's setup: ``small_cnn((32, 32, 1), 10)`` on ``load_digits(32)`` (1,438 training
images) in batches of 32. Each repeat builds a fresh model (so every ``tf.function`` is traced
again, as on a first run) and times :func:`tfprod.doctor.diagnose`; the table gives the median
and the slowest check group. Targets: quick < 20 s, full < 90 s on 2 cores.

``--zoo`` times quick mode instead on every setup of the doctor's zoo (``tests/doctor_zoo.py``:
the broken and healthy setups its tests diagnose, with their validation data and class weights),
each on a freshly built model per repeat, against the same 20 s target.

Usage::

    .venv/bin/python benchmarks/doctor_speed.py --repeats 3 --json /tmp/doctor_speed.json
    .venv/bin/python benchmarks/doctor_speed.py --zoo --repeats 3 --json /tmp/doctor_zoo.json

Run it on an idle machine (``--max-load 0.8`` waits for one): the figures are wall-clock times
on a shared CPU, so the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

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


def run_zoo(repeats: int, only: str | None) -> list[dict]:
    """Quick mode on every zoo setup: the median and slowest of ``repeats`` fresh runs each."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import doctor_zoo
    from tfprod.doctor import diagnose

    data = doctor_zoo.make_data()
    setups = {**{f"broken: {k}": v.build for k, v in doctor_zoo.BROKEN.items()},
              **{f"healthy: {k}": v for k, v in doctor_zoo.HEALTHY.items()}}
    if only:
        setups = {k: v for k, v in setups.items() if only in k}
    warm = doctor_zoo.HEALTHY["digits MLP"](data)  # TensorFlow start-up, not timed
    diagnose(warm.model, warm.dataset)
    rows = []
    for name, build in setups.items():
        seconds, first = [], "-"
        for _ in range(repeats):
            case = build(data)
            start = time.perf_counter()
            report = diagnose(case.model, case.dataset, **case.options)
            seconds.append(time.perf_counter() - start)
            first = (f"{report.findings[0].check} ({report.findings[0].severity})"
                     if report.findings else "-")
        rows.append({"setup": name, "median": statistics.median(seconds), "min": min(seconds),
                     "max": max(seconds), "first": first, "load": os.getloadavg()[0]})
        console.print(f"{name}: {rows[-1]['median']:.2f} s", style="dim")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode (median)")
    parser.add_argument("--modes", default="quick,full", help="comma-separated subset")
    parser.add_argument("--zoo", action="store_true",
                        help="quick mode on every setup of tests/doctor_zoo.py instead")
    parser.add_argument("--only", default=None, help="with --zoo: setups whose name has this")
    add_machine_args(parser)
    args = parser.parse_args(argv)
    runtime.configure(verbose=False)
    if args.zoo:
        return zoo_main(args)
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


def zoo_main(args) -> int:
    info = machine_info()
    if args.max_load is not None:
        wait_for_load(args.max_load, args.max_wait, console)
    rows = run_zoo(args.repeats, args.only)
    table = Table(title=f"tfprod doctor quick mode on the zoo ({len(rows)} setups), median of "
                        f"{args.repeats} fresh models each", title_justify="left")
    for c in ("setup", "median s", "min s", "max s", "first finding"):
        table.add_column(c)
    for r in sorted(rows, key=lambda r: -r["median"]):
        table.add_row(r["setup"], f"{r['median']:.2f}", f"{r['min']:.2f}", f"{r['max']:.2f}",
                      r["first"])
    console.print(table)
    medians = [r["median"] for r in rows]
    slowest = max(rows, key=lambda r: r["max"])
    ok = slowest["max"] < TARGETS["quick"]
    console.print(f"median of medians {statistics.median(medians):.2f} s; slowest run "
                  f"{slowest['max']:.2f} s ({slowest['setup']}); "
                  f"target < {TARGETS['quick']:.0f} s: "
                  + ("[green]PASS[/]" if ok else "[red]FAIL[/]"))
    info["load_average_end"] = list(os.getloadavg())
    console.print(f"machine: {info}", style="dim")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
        console.print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
