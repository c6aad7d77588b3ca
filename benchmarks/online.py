"""Continuous learning: forgetting on class-incremental split digits, recovery on a drifting
stream, and the cost of a round to the server beside it.

1. ``split``: scikit-learn digits, 5 tasks of 2 classes learned in order by one single-head
   MLP (tfprod.online.bench): accuracy on all 10 classes after the last task, per learner,
   over seeds; a table and a PNG.
2. ``drift``: a prequential stream (predict, then learn, 32 at a time) from a model trained on
   the original digits: 1,500 original examples, then 3,000 whose rotation and contrast change
   grow over time, then 1,500 where two rare classes become common. Prequential accuracy, the
   examples until the 500-example window is back within 2 points of its pre-change level,
   and accuracy on a holdout of the original distribution at the end (vs the frozen model).
3. ``serving``: requests/s of ``tfprod serve`` (the digits MLP, REST, 1-instance requests
   from wrk: 1 thread, 8 connections) idle and while another process runs the online loop's
   rounds back to back (512 new examples, replay, gate, export), the learner at TensorFlow's
   defaults, with one thread per pool, and at nice 10 with one thread (what ``tfprod online
   run --nice 10 --threads 1`` does); the loop's examples/s in each case.

    python benchmarks/online.py --parts split,drift,serving --seeds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from machine import add_machine_args, machine_info, wait_for_load  # noqa: E402

LEARNERS = ("frozen", "finetune", "replay", "ewc", "lwf")


def split_part(methods: list[str], seeds: int, epochs: int, png: Path | None) -> list[dict]:
    from tfprod.online.bench import run_split

    out = []
    for m in methods:
        for seed in range(seeds):
            r = run_split(m, seed, epochs=epochs)
            out.append(r.__dict__)
            print(f"split {m} seed {seed}: {r.accuracy:.3f} ({r.seconds:.1f} s)", flush=True)
    if png is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        means = [np.mean([r["accuracy"] for r in out if r["method"] == m]) for m in methods]
        lows = [means[i] - min(r["accuracy"] for r in out if r["method"] == m)
                for i, m in enumerate(methods)]
        highs = [max(r["accuracy"] for r in out if r["method"] == m) - means[i]
                 for i, m in enumerate(methods)]
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.bar(methods, means, yerr=[lows, highs], capsize=4, color="#4878a8")
        ax.set_ylabel("accuracy, all 10 classes")
        ax.set_ylim(0, 1)
        ax.set_title(f"class-incremental split digits (5 x 2 classes, {seeds} seeds)")
        for i, v in enumerate(means):
            ax.text(i, v + 0.02, f"{v:.2f}", ha="center")
        fig.tight_layout()
        fig.savefig(png, dpi=110)
    return out


def _rotate(x: np.ndarray, degrees: float, contrast: float) -> np.ndarray:
    from scipy.ndimage import rotate

    img = rotate(x.reshape(-1, 8, 8), degrees, axes=(1, 2), reshape=False, order=1)
    return np.clip(img.reshape(-1, 64) * contrast + (1 - contrast) * 0.5, 0, 1).astype(
        np.float32)


def drift_stream(seed: int = 0):
    """(x, y, change points, holdout x, holdout y, initial train x, y)."""
    from tfprod.online.bench import split_digits

    x_tr, y_tr, x_te, y_te = split_digits(seed)
    rng = np.random.default_rng(seed)
    init = slice(0, 600)
    pool_x, pool_y = x_tr[600:], y_tr[600:]
    parts_x, parts_y = [], []
    i = rng.choice(len(pool_y), 1500)
    parts_x.append(pool_x[i])
    parts_y.append(pool_y[i])
    for k in range(6):  # growing rotation and contrast change, 500 examples per step
        i = rng.choice(len(pool_y), 500)
        parts_x.append(_rotate(pool_x[i], 8.0 * (k + 1), 1.0 - 0.08 * (k + 1)))
        parts_y.append(pool_y[i])
    weights = np.where(np.isin(pool_y, (3, 8)), 8.0, 1.0)  # rare classes become common
    i = rng.choice(len(pool_y), 1500, p=weights / weights.sum())
    parts_x.append(_rotate(pool_x[i], 48.0, 0.52))
    parts_y.append(pool_y[i])
    return (np.concatenate(parts_x), np.concatenate(parts_y), [1500, 4500], x_te, y_te,
            x_tr[init], y_tr[init])


def recovery(outcomes: np.ndarray, change: int, *, window: int = 200,
             within: float = 0.02) -> int | None:
    """Examples after ``change`` until the trailing ``window`` accuracy, once it fell more
    than ``within`` below its level at the change, is back within ``within`` of it (0: it
    never fell; None: it never came back)."""
    acc = np.convolve(outcomes, np.ones(window) / window, mode="valid")  # acc[i]: ends at i+w-1
    at = lambda i: acc[i - window + 1]  # noqa: E731
    level = at(change - 1)
    fell = next((i for i in range(change, len(outcomes)) if at(i) < level - within), None)
    if fell is None:
        return 0
    back = next((i for i in range(fell, len(outcomes)) if at(i) >= level - within), None)
    return None if back is None else back - change


def drift_part(seeds: int) -> list[dict]:
    from tfprod.online import Prequential, make_learner
    from tfprod.online.bench import mlp

    out = []
    for seed in range(seeds):
        x, y, changes, x_te, y_te, x0, y0 = drift_stream(seed)
        for kind in LEARNERS:
            model = mlp(seed, learning_rate=3e-3)
            model.fit(x0, y0, epochs=20, batch_size=32, verbose=0)
            args = {"buffer_size": 500, "balanced": True} if kind == "replay" else (
                {"strength": 100.0} if kind == "ewc" else {})
            learner = make_learner("finetune" if kind == "frozen" else kind, model, seed=seed,
                                   **args)
            if kind == "replay":
                learner.buffer.add({"pixels": x0}, y0)
            if kind in ("ewc", "lwf"):
                learner.consolidate({"pixels": x0}, y0)
            start_acc = float(np.mean(learner.predict({"pixels": x_te}).argmax(-1) == y_te))
            if kind == "frozen":
                learner.learn = lambda *a, **k: 0.0  # scores only
            pq = Prequential(learner, window=500, chunk=32, keep_outcomes=True)
            t0 = time.perf_counter()
            from tfprod.online.stream import Examples

            pq.run(Examples({"pixels": x}, y))
            seconds = time.perf_counter() - t0
            end_acc = float(np.mean(learner.predict({"pixels": x_te}).argmax(-1) == y_te))
            outcomes = np.asarray(pq.outcomes)
            rec = [recovery(outcomes, c) for c in changes]
            out.append({"learner": kind, "seed": seed, "prequential": pq.accuracy,
                        "recovery": rec, "holdout_start": start_acc, "holdout_end": end_acc,
                        "kept": end_acc / start_acc, "drift_alarms": pq.drifts,
                        "examples_per_second": len(y) / seconds,
                        "curve": np.convolve(outcomes, np.ones(200) / 200, "valid")[::50].tolist()})
            print(f"drift {kind} seed {seed}: prequential {pq.accuracy:.3f} recovery {rec} "
                  f"holdout {start_acc:.3f}->{end_acc:.3f} {len(y) / seconds:.0f} ex/s",
                  flush=True)
    return out


# One learner process: the real OnlineLoop, one round per step (512 new examples scored then
# learned with replay, the gate on a 300-example holdout, the candidate exported), as many
# rounds as fit in the time, under the niceness and TensorFlow threads given.
_LEARN = """
import json, sys, time
from tfprod.online.priority import lower_priority
nice, threads, seconds, base, holdout, state = sys.argv[1:7]
applied = lower_priority(int(nice), int(threads) or None)
import numpy as np
from tfprod.online import IterableStream, OnlineLoop
from tfprod.online.bench import split_digits
x, y, _, _ = split_digits(0)
rng = np.random.default_rng(0)

def batches():
    while True:
        i = rng.choice(len(y), 512)
        yield {"pixels": x[i]}, y[i]

loop = OnlineLoop(base, holdout, model_config_file=state + ".config", state_dir=state,
                  stream=IterableStream(batches()), min_examples=512, margin=1.0)
loop.step()  # the first round traces the functions: not measured
print("READY", flush=True)
end, rounds, t0 = time.monotonic() + float(seconds), 0, time.perf_counter()
seen = loop.prequential.seen
while time.monotonic() < end:
    loop.step()
    rounds += 1
examples = loop.prequential.seen - seen  # scored then learned (the recent fifth is held out)
loop.close()
print(json.dumps({**applied, "rounds": rounds, "examples": examples,
                  "seconds": time.perf_counter() - t0}), flush=True)
"""

# (name, nice, TensorFlow threads per pool; 0: TensorFlow's default, all cores)
LEARNER_SETTINGS = (("default", 0, 0), ("1 thread", 0, 1), ("nice 10, 1 thread", 10, 1))


def serving_part(seconds: int, repeats: int, connections: int) -> list[dict]:
    """wrk against tfprod serve idle, then during the online loop's rounds in another process
    (each learner setting), interleaved per repeat."""
    from serving_tools import Load, Wrk, write_lua
    from tfprod.online.bench import mlp, split_digits
    from tfprod.serve.process import ServerProcess

    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from online_data import export_v1

    x, y, x_te, y_te = split_digits(0)
    out = []
    wrk = Wrk(threads=1, timeout_s=5)
    load = Load("1 instance", 1, connections)
    with tempfile.TemporaryDirectory() as tmp:
        model = mlp(0)
        model.fit(x, y, epochs=3, verbose=0)
        for name in ("digits", "learner"):  # the served one, and the one the loop updates
            export_v1(model, os.path.join(tmp, name), x[:200], y[:200])
        holdout = os.path.join(tmp, "holdout.npz")
        np.savez(holdout, pixels=x_te[:300], labels=y_te[:300])
        body = Path(tmp) / "body.json"
        body.write_text(json.dumps({"instances": [x_te[0].tolist()]}))
        script = write_lua(body)
        with ServerProcess("digits", os.path.join(tmp, "digits"), log=os.path.join(
                tmp, "serve.log"), flags=["--file_system_poll_wait_seconds=0"]) as server:
            url = f"http://127.0.0.1:{server.rest_port}/v1/models/digits:predict"
            pid = server.proc.pid
            wrk.run(url, script, load, 3, pid)  # warm-up
            for r in range(repeats):
                idle = wrk.run(url, script, load, seconds, pid)
                row = {"repeat": r, "idle": idle.rps, "idle_p99_ms": idle.p99_ms,
                       "idle_server_cores": idle.server_cpu_s / idle.seconds}
                for name, nice, threads in LEARNER_SETTINGS:
                    state = os.path.join(tmp, f"state-{r}-{nice}-{threads}")
                    learner = subprocess.Popen(
                        [sys.executable, "-c", _LEARN, str(nice), str(threads),
                         str(seconds + 3), os.path.join(tmp, "learner"), holdout, state],
                        stdout=subprocess.PIPE, text=True)
                    assert learner.stdout is not None
                    if learner.stdout.readline().strip() != "READY":
                        raise RuntimeError("the learner process did not start")
                    busy = wrk.run(url, script, load, seconds, pid)
                    done = json.loads(learner.communicate(timeout=300)[0].strip().splitlines()[-1])
                    row[name] = {"rps": busy.rps, "ratio": busy.rps / idle.rps,
                                 "p99_ms": busy.p99_ms,
                                 "server_cores": busy.server_cpu_s / busy.seconds,
                                 "failed": busy.failed, "learner": done,
                                 "loop_examples_per_second": done["examples"] / done["seconds"]}
                out.append(row)
                print(f"serving repeat {r}: idle {idle.rps:.0f} req/s (p99 {idle.p99_ms:.1f} ms)"
                      + "".join(f"; {n}: {row[n]['rps']:.0f} ({row[n]['ratio']:.2f}x, p99 "
                                f"{row[n]['p99_ms']:.1f} ms, loop "
                                f"{row[n]['loop_examples_per_second']:.0f} ex/s in "
                                f"{row[n]['learner']['rounds']} rounds, nice "
                                f"{row[n]['learner']['nice']})"
                                for n, _, _ in LEARNER_SETTINGS), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="split,drift,serving")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--methods", default="finetune,ewc,lwf,replay-200,replay-500,"
                                             "replay-1000,joint")
    parser.add_argument("--seconds", type=int, default=10, help="serving: wrk seconds")
    parser.add_argument("--repeats", type=int, default=3, help="serving: repeats")
    parser.add_argument("--connections", type=int, default=8, help="serving: wrk connections")
    parser.add_argument("--png", type=Path, default=Path("docs/online_split_digits.png"))
    add_machine_args(parser)
    args = parser.parse_args()
    from rich.console import Console

    if args.max_load is not None:
        wait_for_load(args.max_load, args.max_wait, Console())
    result = {"machine": machine_info(), "command": " ".join(sys.argv)}
    parts = args.parts.split(",")
    if "split" in parts:
        result["split"] = split_part(args.methods.split(","), args.seeds, args.epochs, args.png)
    if "drift" in parts:
        result["drift"] = drift_part(args.seeds)
    if "serving" in parts:
        result["serving"] = serving_part(args.seconds, args.repeats, args.connections)
    result["load_average_end"] = list(os.getloadavg())
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
