"""Training-step benchmark: eager, tf.function, XLA, mixed precision, Keras fit, tfprod Trainer.

Runs :func:`tfprod.train.step_bench.bench_step` on the two default models (random data of the
right shape, nothing is downloaded):

- ``mlp``: the MNIST-size MLP, 784 -> 128 relu -> 10 softmax, Adam, batch 32;
- ``cnn``: the ``small_cnn`` preset on 32x32x1 images, batch 32.

Then the gradient-accumulation memory check: a conv net whose activations dominate its memory,
trained by the ``Trainer`` in a fresh subprocess per configuration and repeat (batch B, batch
4B, and batches of B with ``accumulation_steps=4``, i.e. updates over 4B examples); each child
reports its peak resident memory (``ru_maxrss``) before and after ``Trainer.fit``. TensorFlow's
allocator keeps freed memory, so the peak after training includes everything ``fit`` does
(building the model on the first batch included).

Prints tables and the targets PASS/FAIL, and can write JSON.

Usage::

    .venv/bin/python benchmarks/train_step.py --steps 200 --repeats 5 --json /tmp/step.json

Run it on an idle machine (``--max-load 0.8`` waits for one): the figures are shared-CPU
wall-clock rates.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from machine import machine_info, wait_for_load
from tfprod import runtime

console = Console(width=160)

#: The MLP figures measured on this machine when the issue was written (steps/s).
REFERENCE_MLP = {"eager": 63.0, "function": 830.0, "xla": 1380.0, "fit": 450.0}
#: Which measured variant stands for each reference figure: the issue's figures come from a
#: plain loop calling the step on in-memory tensors.
REFERENCE_AS = {"eager": "eager", "function": "function_loop", "xla": "xla_loop", "fit": "fit"}


def reference_rows(report) -> list[list[str]]:
    """The MLP's figures beside the issue's, absolute and as multiples of eager: the machine's
    speed moves the absolute figures (eager is pure dispatch overhead), not the multiples."""
    rows = []
    for ref_name, ref in REFERENCE_MLP.items():
        name = REFERENCE_AS[ref_name]
        if name not in report.results or "eager" not in report.results:
            continue
        rate = report.rate(name)
        rows.append([ref_name, f"~{ref:,.0f}", f"{ref / REFERENCE_MLP['eager']:.1f}x", name,
                     f"{rate:,.0f}", f"{rate / report.rate('eager'):.1f}x", f"{rate / ref:.2f}x"])
    return rows


#: The conv net of the memory check: activations of ~8 MB per example, weights of ~40 KB.
MEMORY_MODEL = {"image": 128, "channels": 3, "filters": 16, "layers": 4}


# ------------------------------------------------------------------------------ memory check


def _memory_model():
    import keras

    size, channels = MEMORY_MODEL["image"], MEMORY_MODEL["channels"]
    inputs = keras.Input((size, size, channels))
    x = inputs
    for _ in range(MEMORY_MODEL["layers"]):
        # Full resolution throughout: every layer keeps a big activation for the backward pass.
        x = keras.layers.Conv2D(MEMORY_MODEL["filters"], 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    model = keras.Model(inputs, outputs, name="activation_heavy_cnn")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _hwm_mib() -> float | None:
    """VmHWM, the high-water mark of this address space (Linux), as a cross-check."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        return None


def memory_child(config: dict) -> dict:
    """One configuration, in this (fresh) process: peak RSS before and after training."""
    runtime.configure()
    import numpy as np
    import tensorflow as tf

    from tfprod.train.trainer import Trainer

    size, channels = MEMORY_MODEL["image"], MEMORY_MODEL["channels"]
    rng = np.random.default_rng(0)
    batch = config["batch"]
    x = rng.random((batch, size, size, channels), dtype=np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    trainer = Trainer(_memory_model(), accumulation_steps=config["accumulation_steps"])
    before, hwm_before = _peak_mib(), _hwm_mib()
    start = time.perf_counter()
    trainer.fit(data, epochs=1, steps_per_epoch=config["steps"])
    return {**config, "peak_before_mib": before, "peak_mib": _peak_mib(),
            "vmhwm_before_mib": hwm_before, "vmhwm_mib": _hwm_mib(),
            "seconds": time.perf_counter() - start}


def memory_check(batch: int, steps: int, repeats: int) -> dict:
    """Peak RSS of batch B, batch 4B and B x accumulation_steps=4, each run ``repeats`` times
    in a fresh process; ``adds_mib`` is the median of (peak after - peak before training).

    Run it before this process grows: on Linux a child's ``ru_maxrss`` starts at its parent's
    RSS at fork time (the maximum survives ``execve``), so a parent that has trained models
    would hide the children's peaks. ``VmHWM`` (reset by ``execve``) is kept as a cross-check.
    """
    configs = {
        f"batch {batch}": {"batch": batch, "accumulation_steps": 1},
        f"batch {4 * batch}": {"batch": 4 * batch, "accumulation_steps": 1},
        f"batch {batch} x accumulation_steps=4 (updates over {4 * batch})":
            {"batch": batch, "accumulation_steps": 4},
    }
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    results = {}
    for name, config in configs.items():
        config = {**config, "steps": steps}
        runs = []
        for _ in range(repeats):
            done = subprocess.run(
                [sys.executable, __file__, "--memory-child", json.dumps(config)],
                capture_output=True, text=True, env=env, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"memory check {name!r} failed:\n{done.stderr[-2000:]}")
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        adds = [r["peak_mib"] - r["peak_before_mib"] for r in runs]
        hwm_adds = [(r["vmhwm_mib"] or 0) - (r["vmhwm_before_mib"] or 0) for r in runs]
        results[name] = {**config, "runs": runs, "adds_mib": statistics.median(adds),
                         "vmhwm_adds_mib": statistics.median(hwm_adds),
                         "peak_mib": statistics.median(r["peak_mib"] for r in runs),
                         "peak_before_mib": statistics.median(r["peak_before_mib"]
                                                              for r in runs)}
        console.print(f"  {name}: training adds " + ", ".join(f"+{a:.0f}" for a in adds)
                      + " MiB", style="dim", highlight=False)
    return results


# ----------------------------------------------------------------------------------- output


def _table(title: str, columns: list[str], rows: list[list]) -> Table:
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*[str(v) for v in r])
    return table






def evaluate(reports: dict, memory: dict | None, batch: int) -> list[dict]:
    """Each target's measured values and PASS/FAIL."""
    out = []
    for name, report in reports.items():
        if {"fit", "trainer"} <= set(report.results):
            t, f = report.results["trainer"], report.results["fit"]
            overlap = t.min <= f.max and f.min <= t.max
            out.append({"target": f"{name}: Trainer steps/s >= Keras fit steps/s (default "
                                  "strategy, same model and data)",
                        "measured": f"{t.median:,.0f} vs {f.median:,.0f} "
                                    f"({t.median / f.median:.2f}x)"
                                    + ("; min–max ranges overlap" if overlap else ""),
                        "pass": t.median >= f.median})
    if memory is not None:
        small, big, acc = (r["adds_mib"] for r in memory.values())
        out.append({"target": f"memory: accumulation's training peak (batches of {batch} x 4) "
                              f"is closer to batch {batch}'s than to batch {4 * batch}'s",
                    "measured": f"+{acc:.0f} MiB vs +{small:.0f} (B) and +{big:.0f} (4B) MiB",
                    "pass": abs(acc - small) < abs(acc - big)})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (median)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per variant")
    parser.add_argument("--memory-batch", type=int, default=16, help="B of the memory check")
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--memory-repeats", type=int, default=3, help="processes per config")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory check")
    parser.add_argument("--max-load", type=float, default=None,
                        help="before each section, wait (up to --max-wait s) for a 1-minute "
                             "load average below this")
    parser.add_argument("--max-wait", type=float, default=1200)
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child is not None:
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return 0

    def settle(section: str) -> None:
        # Our own previous section raised the load too: each section starts on a quiet machine.
        if args.max_load is not None:
            wait_for_load(args.max_load, args.max_wait, console)
        loads[section] = os.getloadavg()[0]
        console.print(f"{section}: 1-minute load average {loads[section]:.2f}", highlight=False)

    loads: dict[str, float] = {}
    memory = None
    if not args.no_memory:
        # First, while this process is small and has not imported TensorFlow (see memory_check).
        settle("memory")
        console.print(f"memory check: {MEMORY_MODEL}, Trainer, {args.memory_steps} steps, one "
                      "fresh process per configuration and repeat", highlight=False)
        memory = memory_check(args.memory_batch, args.memory_steps, args.memory_repeats)
        rows = [[name, f"{r['peak_before_mib']:.0f}", f"{r['peak_mib']:.0f}",
                 f"+{r['adds_mib']:.0f}", f"+{r['vmhwm_adds_mib']:.0f}"]
                for name, r in memory.items()]
        console.print(_table(f"peak resident memory (ru_maxrss, MiB; median of "
                             f"{args.memory_repeats} processes)",
                             ["configuration", "before training", "peak", "training adds",
                              "VmHWM adds"], rows))

    runtime.configure()
    from tfprod.train.step_bench import bench_step, default_benchmark

    info = machine_info()
    console.print(_table("machine", ["what", "value"], [[k, v] for k, v in info.items()]))
    reports = {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        settle(name)
        report = bench_step(*default_benchmark(name, args.batch_size), steps=args.steps,
                            repeats=args.repeats, warmup=args.warmup,
                            progress=lambda v, i, n: console.print(f"  [{i + 1}/{n}] {v}",
                                                                   style="dim", highlight=False))
        console.print(_table(report.title, report.columns, report.rows))
        for note in report.notes:
            console.print(f"  note: {note}", style="dim", highlight=False)
        reports[name] = report
    if "mlp" in reports and args.batch_size == 32:
        report = reports["mlp"]
        console.print(_table(
            "mlp vs the reference figures of the issue (steps/s; the reference is a plain loop)",
            ["reference", "steps/s", "x eager", "measured as", "steps/s", "x eager",
             "measured / reference"], reference_rows(report)))
    targets = evaluate(reports, memory, args.memory_batch)
    console.print(_table("targets", ["target", "measured", "result"], [
        [t["target"], t["measured"], "[green]PASS[/]" if t["pass"] else "[red]FAIL[/]"]
        for t in targets]))
    info["load_average_end"] = list(os.getloadavg())
    console.print(f"load average at the end: {info['load_average_end']}")
    if args.json is not None:
        payload = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": info,
            "load_before": loads,
            "reference_mlp": REFERENCE_MLP,
            "reports": {name: r.to_json() for name, r in reports.items()},
            "memory": {"model": MEMORY_MODEL, "batch": args.memory_batch,
                       "steps": args.memory_steps, "repeats": args.memory_repeats,
                       "results": memory},
            "targets": targets,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, default=str))
        console.print(f"wrote {args.json}")
    return 0 if all(t["pass"] for t in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
