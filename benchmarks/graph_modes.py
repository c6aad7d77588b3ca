"""Static vs dynamic graphs: TF1 Session vs eager vs tf.function vs XLA, across sizes.

Runs :func:`tfprod.migrate.graph_bench.bench_graph` (what ``tfprod bench graph`` runs) on two
workloads at the sizes users meet, each mode with the same weights and batch:

- ``mlp``: an MLP training step (32 features -> hidden -> hidden -> 10, softmax
  cross-entropy, SGD) at batch/hidden 32/64, 256/256 and 1024/1024;
- ``rnn``: a tanh recurrence over 20 steps (TF1 ``tf.while_loop`` vs a Python loop over
  ``tf.range``) at batch/hidden 32/64 and 256/256.

Prints one table per size and a summary of the ratios to the TF1 Session; writes JSON.

Usage::

    .venv/bin/python benchmarks/graph_modes.py --repeats 5 --json /tmp/graph.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from machine import add_machine_args, machine_info, wait_for_load
from tfprod import runtime

console = Console(width=160)

#: (workload, batch, hidden, timed steps per repeat): enough steps for ~0.5-3 s per run in the
#: slowest mode on 2 cores.
SIZES = [
    ("mlp", 32, 64, 300),
    ("mlp", 256, 256, 150),
    ("mlp", 1024, 1024, 20),
    ("rnn", 32, 64, 100),
    ("rnn", 256, 256, 40),
]


def _table(title: str, columns: list[str], rows: list[list]) -> Table:
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*[str(v) for v in r])
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per mode (median)")
    parser.add_argument("--workloads", default="mlp,rnn", help="comma-separated: mlp, rnn")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every size's timed steps (0.05 for a quick try)")
    add_machine_args(parser)
    args = parser.parse_args(argv)
    if args.max_load is not None:
        wait_for_load(args.max_load, args.max_wait, console)
    runtime.configure()
    from tfprod.migrate.graph_bench import MODES, bench_graph, make_problem

    info = machine_info()
    console.print(_table("machine", ["what", "value"], [[k, v] for k, v in info.items()]))
    workloads = {w.strip() for w in args.workloads.split(",")}
    results = []
    for workload, batch, hidden, steps in SIZES:
        if workload not in workloads:
            continue
        steps = max(2, int(steps * args.scale))
        problem = make_problem(workload, batch=batch, hidden=hidden)
        load = os.getloadavg()[0]
        report = bench_graph(problem, steps=steps, repeats=args.repeats)
        console.print(_table(f"{report.title} ({steps} steps x {args.repeats}, load "
                             f"{load:.2f})", ["mode", "steps/s", "min–max", "ms/step",
                                              "x TF1"], report.rows()))
        results.append({"workload": workload, "batch": batch, "hidden": hidden,
                        "load_before": load, **report.to_json()})
    modes = list(MODES)
    rows = []
    for r in results:
        rates = r["median_steps_per_s"]
        rows.append([r["title"], *[f"{rates[m] / rates['session']:.2f}x" for m in modes]])
    console.print(_table("steps/s as multiples of the TF1 Session with feed_dict",
                         ["size", *modes], rows))
    info["load_average_end"] = list(os.getloadavg())
    console.print(f"load average at the end: {info['load_average_end']}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": info,
            "results": results}, indent=2, default=str))
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
