"""Training a variable-length sequence classifier: bucketing vs padding every batch to the max.

The task is ``tfprod.data.sequence_task`` (label: no key token / key in the first half / in
the second half: content and length), its lengths a long tail: log-normal around
``--median`` with ``--sigma``, clipped to ``[1, --max-length]`` (the defaults give median 20,
p90 ~63, p99 ~150, max ~320 of 400). The model is
``tfprod.models.sequence_classifier`` (IntegerLookup -> Embedding(mask_zero) -> BiGRU ->
softmax). ``compare_batching`` trains the same initial weights twice, for ``--epochs`` epochs
each, on the same shuffled sequences: once with every batch padded to the longest training
sequence ("pad to max"), once bucketed (``bucketed_batches``, ``--buckets`` quantile buckets,
each batch padded to its own longest). Speed is timed from the second epoch on; accuracy is
on ``--sequences // 4`` held-out sequences.

Each of ``--repeats`` runs uses its own seed (data, initial weights, shuffle); medians with
min-max over runs; the speed-up is computed per run (both strategies in the same run).

Targets (issue 16): bucketing >= 1.5x pad-to-max training steps/s, test accuracy within 1 point.

Usage::

    .venv/bin/python benchmarks/sequence_batching.py --json /tmp/seq.json
    .venv/bin/python benchmarks/sequence_batching.py --quick     # smoke run, ~1 minute
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from machine import add_machine_args, machine_info, wait_for_load
from tfprod import runtime

console = Console(width=120)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.2f} ({min(values):,.2f}-{max(values):,.2f})"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sequences", type=int, default=2000)
    p.add_argument("--median", type=int, default=20)
    p.add_argument("--sigma", type=float, default=0.9)
    p.add_argument("--max-length", type=int, default=400)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--buckets", type=int, default=8)
    p.add_argument("--units", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    add_machine_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.sequences, args.max_length, args.epochs, args.repeats = 400, 100, 2, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runtime.configure(verbose=False)
    load = wait_for_load(args.max_load, args.max_wait, console) if args.max_load else None
    info = machine_info()
    info["load_before"] = load
    from tfprod.data.sequence_task import sequence_task
    from tfprod.models.sequence import compare_batching

    runs = []
    start = time.perf_counter()
    for seed in range(args.repeats):
        train = sequence_task(args.sequences, median=args.median, sigma=args.sigma,
                              max_length=args.max_length, seed=2 * seed)
        test = sequence_task(args.sequences // 4, median=args.median, sigma=args.sigma,
                             max_length=args.max_length, seed=2 * seed + 1)
        lengths = np.array([len(s) for s in train[0]])
        result = compare_batching(train, test, vocab_size=50, num_classes=3,
                                  epochs=args.epochs, batch_size=args.batch_size,
                                  num_buckets=args.buckets, units=args.units, seed=seed)
        pad, bucketed = result
        runs.append({"seed": seed, "lengths": {
            "median": float(np.median(lengths)), "p90": float(np.percentile(lengths, 90)),
            "p99": float(np.percentile(lengths, 99)), "max": int(lengths.max())},
            "pad_to_max": pad.to_json(), "bucketed": bucketed.to_json(),
            "speedup": bucketed.steps_per_s / pad.steps_per_s,
            "accuracy_diff": bucketed.accuracy - pad.accuracy})
        console.print(f"seed {seed}: pad-to-max {pad.steps_per_s:.2f} steps/s "
                      f"({pad.accuracy:.1f}%), bucketed {bucketed.steps_per_s:.2f} steps/s "
                      f"({bucketed.accuracy:.1f}%)")
    info["load_after"] = list(os.getloadavg())
    t = Table(title=f"training {args.sequences:,} sequences, lengths median "
                    f"{runs[0]['lengths']['median']:.0f} / p99 {runs[0]['lengths']['p99']:.0f} "
                    f"/ max {runs[0]['lengths']['max']}, batch {args.batch_size}, BiGRU "
                    f"{args.units}, {args.repeats} runs")
    for c in ("batching", "steps/s", "sequences/s", "padding %", "test accuracy %"):
        t.add_column(c, justify="right")
    for key in ("pad_to_max", "bucketed"):
        t.add_row(key, spread([r[key]["steps_per_s"] for r in runs]),
                  spread([r[key]["sequences_per_s"] for r in runs]),
                  spread([r[key]["waste_pct"] for r in runs]),
                  spread([r[key]["accuracy"] for r in runs]))
    console.print(t)
    speedups = [r["speedup"] for r in runs]
    diffs = [r["accuracy_diff"] for r in runs]
    console.print(f"bucketing / pad-to-max steps/s: {spread(speedups)}x (target >= 1.5x); "
                  f"accuracy difference {spread(diffs)} points (target within 1); "
                  f"{time.perf_counter() - start:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": info, "args": vars(args) | {"json": None},
                                         "runs": runs}, indent=2, default=str))
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
