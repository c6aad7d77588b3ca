"""``tfprod optimize`` and ``tfprod predict`` figures on the quickstart digits CNN.

Trains ``small_cnn((32, 32, 1), 10)`` on ``load_digits(32)`` (1,438 training, 359 test images)
for ``--epochs`` epochs, builds every variant with :func:`tfprod.optimize.compare.optimize`
(the whole table is printed), then measures the issue's figures:

- full-int8 LiteRT: file size ratio float32 / int8 and accuracy drop vs the Keras model;
- batch-1 p50 latency of int8 / float32 LiteRT (each re-timed ``--repeats`` times, ``--runs``
  calls each, interleaved; median of the p50s, min-max);
- 50% and 80% pruned + int8: gzip size and accuracy; float32 gzip / pruned80-int8 gzip;
- ``tfprod.export.predict.predict`` over the test set (.keras, batch 256) vs a per-sample
  ``model.predict`` loop. The loop is timed on the first ``--loop-samples`` examples only and
  its per-sample time extrapolated to the whole test set (stated in the table).

Targets (issue 5): int8 >= 3.5x smaller, drop <= 1 point; int8 p50 <= 0.6x float32; pruned80 +
int8 gzip >= 8x smaller than float32's, drop <= 1.5 points; predict >= 50x the loop.

Usage::

    .venv/bin/python benchmarks/optimize.py --repeats 5 --json /tmp/optimize.json

Run it on an idle machine (``--max-load 0.8`` waits for one): the figures are wall-clock
times on a shared CPU, so the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from machine import add_machine_args, machine_info, wait_for_load
from tfprod import runtime

console = Console(width=160)


def train_model(epochs: int, seed: int):
    import keras

    from tfprod.data.sample import load_digits
    from tfprod.models import small_cnn

    keras.utils.set_random_seed(seed)
    train, test = load_digits(32)
    model = small_cnn((32, 32, 1), 10)
    model.fit(train[0], train[1], batch_size=32, epochs=epochs, verbose=0)
    return model, train, test


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "values": values}


def latencies(paths: dict[str, str], x: np.ndarray, repeats: int, runs: int) -> dict:
    from tfprod.export.litert import LiteRTModel
    from tfprod.optimize.measure import latency

    runners = {name: LiteRTModel.load(path) for name, path in paths.items()}
    p50 = {name: [] for name in runners}
    for _ in range(repeats):
        for name, runner in runners.items():  # interleaved: drift hits both alike
            p50[name].append(latency(runner, x[:1], runs=runs).p50_ms)
    return {name: spread(v) for name, v in p50.items()}


def predict_vs_loop(model, keras_path: str, x: np.ndarray, repeats: int,
                    loop_samples: int, tmp: str) -> dict:
    from tfprod.export.predict import predict

    npy = os.path.join(tmp, "x_test.npy")
    np.save(npy, x)
    batched, per_sample = [], []
    model.predict(x[:1], verbose=0)  # Keras' predict function traced once, not timed
    for _ in range(repeats):
        result = predict(keras_path, npy, os.path.join(tmp, "p.npy"), batch_size=256)
        batched.append(result.seconds)
        start = time.perf_counter()
        for i in range(loop_samples):
            model.predict(x[i:i + 1], verbose=0)
        per_sample.append((time.perf_counter() - start) / loop_samples)
    loop_total = [s * len(x) for s in per_sample]
    speedups = [lt / b for lt, b in zip(loop_total, batched, strict=True)]
    return {"predict_seconds": spread(batched), "loop_seconds_per_sample": spread(per_sample),
            "loop_seconds_extrapolated": spread(loop_total), "speedup": spread(speedups),
            "examples": len(x), "loop_samples": loop_samples}


def targets(report, lat: dict, pv: dict) -> list[dict]:
    r = {x.name: x for x in report.results}
    p50 = lat["int8"]["median"] / lat["float32"]["median"]
    return [
        {"figure": "int8 size: float32 / int8", "value": r["float32"].file_bytes
         / r["int8"].file_bytes, "target": ">= 3.5", "pass": r["float32"].file_bytes
         >= 3.5 * r["int8"].file_bytes},
        {"figure": "int8 accuracy drop (points)", "value": r["int8"].drop, "target": "<= 1",
         "pass": r["int8"].drop <= 1.0},
        {"figure": "batch-1 p50: int8 / float32", "value": p50, "target": "<= 0.6",
         "pass": p50 <= 0.6},
        {"figure": "gzip: float32 / pruned80-int8", "value": r["float32"].gzip_bytes
         / r["pruned80-int8"].gzip_bytes, "target": ">= 8",
         "pass": r["float32"].gzip_bytes >= 8 * r["pruned80-int8"].gzip_bytes},
        {"figure": "pruned80-int8 accuracy drop (points)", "value": r["pruned80-int8"].drop,
         "target": "<= 1.5", "pass": r["pruned80-int8"].drop <= 1.5},
        {"figure": f"predict vs per-sample loop (loop: {pv['loop_samples']} samples, "
         "extrapolated)", "value": pv["speedup"]["median"], "target": ">= 50",
         "pass": pv["speedup"]["median"] >= 50},
    ]


def print_tables(report, lat: dict, pv: dict, rows: list[dict], repeats: int) -> None:
    variants = Table(title=f"variants ({report.test_examples} test images; float "
                           f"{report.metric} {report.reference:.2f})", title_justify="left")
    for c in report.columns:
        variants.add_column(c)
    for row in report.rows:
        variants.add_row(*row)
    console.print(variants)
    for rec in report.recommendations:
        console.print(f"{rec.target}: {rec.variant} - {rec.reason}", highlight=False)
    detail = Table(title=f"timings, median of {repeats} (min-max)", title_justify="left")
    for c in ("what", "median", "min-max"):
        detail.add_column(c)
    for name, s in lat.items():
        detail.add_row(f"{name} LiteRT batch-1 p50 (ms)", f"{s['median']:.4f}",
                       f"{s['min']:.4f}-{s['max']:.4f}")
    for key, label in (("predict_seconds", "tfprod predict, test set (s)"),
                       ("loop_seconds_per_sample", "model.predict per sample (s)"),
                       ("loop_seconds_extrapolated", "per-sample loop, test set, "
                                                     "extrapolated (s)"),
                       ("speedup", "predict speed-up (x)")):
        s = pv[key]
        detail.add_row(label, f"{s['median']:.4f}", f"{s['min']:.4f}-{s['max']:.4f}")
    console.print(detail)
    verdicts = Table(title="targets (issue 5)", title_justify="left")
    for c in ("figure", "value", "target", "verdict"):
        verdicts.add_column(c)
    for row in rows:
        verdicts.add_row(row["figure"], f"{row['value']:.2f}", row["target"],
                         "[green]PASS[/]" if row["pass"] else "[red]FAIL[/]")
    console.print(verdicts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8, help="training epochs (quickstart: 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats (median)")
    parser.add_argument("--runs", type=int, default=500, help="batch-1 calls per latency")
    parser.add_argument("--loop-samples", type=int, default=100,
                        help="examples timed in the per-sample model.predict loop")
    parser.add_argument("--seed", type=int, default=0)
    add_machine_args(parser)
    args = parser.parse_args(argv)
    runtime.configure(verbose=False)
    from tfprod.optimize.compare import optimize

    info = machine_info()
    model, train, test = train_model(args.epochs, args.seed)
    if args.max_load is not None:
        wait_for_load(args.max_load, args.max_wait, console)
    with tempfile.TemporaryDirectory() as tmp:
        report = optimize(model, train, test, out_dir=os.path.join(tmp, "variants"),
                          runs=args.runs)
        paths = {name: report.result(name).path for name in ("float32", "int8")}
        lat = latencies(paths, test[0], args.repeats, args.runs)
        pv = predict_vs_loop(model, report.result("keras").path, test[0], args.repeats,
                             args.loop_samples, tmp)
    rows = targets(report, lat, pv)
    print_tables(report, lat, pv, rows, args.repeats)
    info["load_average_end"] = list(os.getloadavg())
    console.print(f"machine: {info}", style="dim")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "epochs": args.epochs,
                                         "report": report.to_json(), "latency_p50_ms": lat,
                                         "predict_vs_loop": pv, "targets": rows}, indent=2,
                                        default=str))
        console.print(f"wrote {args.json}")
    return 0 if all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
