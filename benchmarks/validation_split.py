"""What the hashed validation split costs: read_csv / read_tfrecords with and without it.

Generates a CSV file and a TFRecord folder (4 shards) of N rows x 16 float columns plus an int
label (nothing is downloaded), then for each size and format measures, side by side in one run:

- open: seconds to build the dataset (the CSV's Python row check; with the split also the one
  counting pass that gives the side its row count and fingerprint);
- epoch: seconds and rows per second over one epoch of the training side (batch 256,
  shuffled), against the whole file read without a split (every row hashed, 80% kept, vs none).

Usage::

    .venv/bin/python benchmarks/validation_split.py --sizes 20000,200000 --repeats 3 \\
        --json /tmp/validation_split.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from machine import add_machine_args, machine_info, wait_for_load

console = Console(width=120)
COLUMNS = 16


def write_data(root: str, n: int) -> tuple[str, str]:
    from tfprod.data import write_tfrecords

    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, COLUMNS)).astype(np.float32)
    y = rng.integers(0, 3, size=n)
    csv_path = os.path.join(root, f"t{n}.csv")
    with open(csv_path, "w") as f:
        f.write(",".join(f"f{i}" for i in range(COLUMNS)) + ",label\n")
        for row, label in zip(x, y, strict=True):
            f.write(",".join(f"{v:.5f}" for v in row) + f",{label}\n")
    columns = {f"f{i}": x[:, i] for i in range(COLUMNS)}
    tfr = os.path.join(root, f"t{n}_tfr")
    write_tfrecords(tfr, {**columns, "label": y}, num_shards=4)
    return csv_path, tfr


def measure(read, path: str, split: float | None) -> tuple[float, float, int]:
    """(open seconds, epoch rows/s, rows) of one read."""
    kwargs = {"validation_split": split, "subset": "training"} if split else {}
    start = time.perf_counter()
    ds = read(path, label="label", batch_size=256, seed=0, **kwargs)
    opened = time.perf_counter() - start
    start, rows = time.perf_counter(), 0
    for _, y in ds:
        rows += int(y.shape[0])
    return opened, rows / (time.perf_counter() - start), rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,200000", help="rows, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--split", type=float, default=0.2)
    add_machine_args(parser)
    args = parser.parse_args()
    if args.max_load is not None:
        wait_for_load(args.max_load, args.max_wait, console)
    from tfprod.data import read_csv, read_tfrecords

    results = []
    with tempfile.TemporaryDirectory(prefix="tfprod-split-bench-") as root:
        for n in (int(s) for s in args.sizes.split(",")):
            csv_path, tfr = write_data(root, n)
            for fmt, read, path in (("csv", read_csv, csv_path),
                                    ("tfrecord", read_tfrecords, tfr)):
                runs = {"whole": [], "split": []}
                measure(read, path, args.split)  # untimed: first-call tracing and file cache
                for _ in range(args.repeats):  # interleaved, so drift hits both alike
                    runs["whole"].append(measure(read, path, None))
                    runs["split"].append(measure(read, path, args.split))
                row = {"format": fmt, "rows": n}
                for name, values in runs.items():
                    opened = [v[0] for v in values]
                    speed = [v[1] for v in values]
                    row[name] = {"open_s": statistics.median(opened),
                                 "open_range": [min(opened), max(opened)],
                                 "rows_per_s": statistics.median(speed),
                                 "rows_per_s_range": [min(speed), max(speed)],
                                 "rows_read": values[0][2]}
                # Epoch seconds: the split reads every row of the file to deliver its side.
                ratios = [(s[2] / s[1]) / (w[2] / w[1])
                          for s, w in zip(runs["split"], runs["whole"], strict=True)]
                row["epoch_time_ratio"] = statistics.median(ratios)
                row["epoch_time_ratio_range"] = [min(ratios), max(ratios)]
                results.append(row)
    table = Table(title=f"hashed validation split {args.split} (training side) vs the whole "
                        f"file; {COLUMNS} float columns, batch 256, median of {args.repeats}")
    for c in ("format", "rows", "open whole s", "open split s", "epoch whole rows/s",
              "epoch split rows/s", "epoch s split / whole"):
        table.add_column(c, justify="right")
    for r in results:
        w, s = r["whole"], r["split"]
        low, high = r["epoch_time_ratio_range"]
        table.add_row(r["format"], f"{r['rows']:,}", f"{w['open_s']:.2f}", f"{s['open_s']:.2f}",
                      f"{w['rows_per_s']:,.0f}", f"{s['rows_per_s']:,.0f}",
                      f"{r['epoch_time_ratio']:.2f}x ({low:.2f}–{high:.2f})")
    console.print(table)
    machine = machine_info()
    console.print(f"machine: {machine}", style="dim")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
