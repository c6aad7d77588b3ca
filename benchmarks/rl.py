"""DQN benchmark: tfprod.rl against Stable-Baselines3 with rl-baselines3-zoo's settings.

Four parts:

1. **Sample efficiency and wall time** (the issue's targets): CartPole-v1, ``--steps`` env steps
   (50,000) per run, seeds ``--seeds`` (0-4). For each seed, tfprod's DQN (the CartPole preset:
   zoo settings + double DQN + keep-best evaluation) and SB3's DQN (the zoo's
   ``hyperparams/dqn.yml`` CartPole-v1 entry) each run in a fresh child process with one
   thread (TensorFlow intra/inter-op 1; ``torch.set_num_threads(1)``), one after the other.
   Both are scored the same way: 20 greedy episodes on the same evaluation seeds (disjoint from
   every seed used in training). tfprod reports its kept weights and its last weights; SB3 its
   last weights (SB3's DQN keeps none). Wall time is ``learn`` alone (tfprod's includes its
   periodic evaluations), env steps/s = steps / wall time.
2. **Acting at batch 1**: one observation -> Q-values, per call: the numpy copy the agent acts
   with, a traced ``tf.function``, an eager Keras call, ``model.predict``.
3. **Training phase**: 128 gradient steps of batch 64 (the CartPole preset's phase) as one
   traced loop, the same with XLA, and as 128 calls of a one-step ``tf.function``.
4. **Replay memory**: 100,000 CartPole transitions: the buffer's arrays, what tracemalloc sees
   numpy allocate, and the process's resident memory growth, against the raw arrays.

Usage::

    .venv/bin/pip install -e ".[bench]"
    flock -x /tmp/tfprod-quiet.lock .venv/bin/python benchmarks/rl.py --seeds 0 1 2 3 4 \\
        --json rl.json

Develop with ``--steps 3000 --seeds 0``.
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

from rich.console import Console
from rich.table import Table

from machine import add_machine_args, machine_info, wait_for_load

console = Console(width=120)
ENV = "CartPole-v1"
#: rl-baselines3-zoo, hyperparams/dqn.yml, CartPole-v1 (n_timesteps 5e4, policy MlpPolicy).
ZOO_CARTPOLE = dict(learning_rate=2.3e-3, batch_size=64, buffer_size=100_000,
                    learning_starts=1_000, gamma=0.99, target_update_interval=10,
                    train_freq=256, gradient_steps=128, exploration_fraction=0.16,
                    exploration_final_eps=0.04, policy_kwargs=dict(net_arch=[256, 256]))
TARGET_RETURN = 475.0


def _one_thread() -> None:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ["OMP_NUM_THREADS"] = "1"
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def _final_eval(q_values, seed: int, episodes: int = 20) -> dict:
    from tfprod.rl.evaluation import FINAL_SEED_OFFSET, evaluate

    result = evaluate(q_values, ENV, episodes=episodes, seed=FINAL_SEED_OFFSET + 1000 * seed)
    return {"mean": result.mean, "std": result.std}


def child_tfprod(seed: int, steps: int) -> dict:
    _one_thread()
    from tfprod.rl import DQN, preset
    from tfprod.rl.network import make_actor

    agent = DQN(ENV, preset(ENV).replace(steps=steps), seed=seed)
    result = agent.learn()
    last = _final_eval(make_actor(agent.q_network), seed)
    return {"wall_seconds": result.wall_seconds, "kept": {
        "mean": result.eval_mean_return, "std": result.eval_std_return},
        "last": last, "best_step": result.best_step, "episodes": result.episodes,
        "gradient_steps": result.gradient_steps}


def child_sb3(seed: int, steps: int) -> dict:
    os.environ["OMP_NUM_THREADS"] = "1"
    import numpy as np
    import stable_baselines3
    import torch
    from stable_baselines3 import DQN

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    model = DQN("MlpPolicy", ENV, seed=seed, device="cpu", verbose=0, **ZOO_CARTPOLE)
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    wall = time.perf_counter() - start

    def q_values(obs):
        action, _ = model.predict(obs, deterministic=True)
        return np.eye(2)[np.asarray(action)]

    return {"wall_seconds": wall, "last": _final_eval(q_values, seed),
            "version": stable_baselines3.__version__, "torch": torch.__version__}


def child_acting() -> dict:
    _one_thread()
    import numpy as np
    import tensorflow as tf

    from tfprod.rl import build_q_network, env_spec
    from tfprod.rl.network import GraphQ, NumpyQ

    net = build_q_network(env_spec(ENV), hidden=(256, 256))
    obs = np.zeros((1, 4), np.float32)
    paths = {"numpy copy (NumpyQ)": NumpyQ(net), "tf.function (GraphQ)": GraphQ(net),
             "Keras model(x)": lambda x: net(x, training=False).numpy(),
             "model.predict": lambda x: net.predict(x, verbose=0)}
    out = {}
    for name, fn in paths.items():
        fn(obs)
        n = 30 if name == "model.predict" else 3000
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(n):
                fn(obs)
            runs.append((time.perf_counter() - start) / n * 1e6)
        out[name] = runs
    del tf
    return out


def child_phase() -> dict:
    _one_thread()
    import numpy as np

    from tfprod.rl import QLearner, build_q_network, env_spec

    rng = np.random.default_rng(0)
    k, b = 128, 64

    def batch(steps):
        return {"obs": rng.normal(size=(steps, b, 4)).astype(np.float32),
                "action": rng.integers(0, 2, (steps, b)).astype(np.uint8),
                "reward": np.ones((steps, b), np.float32),
                "next_obs": rng.normal(size=(steps, b, 4)).astype(np.float32),
                "discount": np.full((steps, b), 0.99, np.float32),
                "weights": np.ones((steps, b), np.float32)}

    out = {}
    for name, jit, per_call in [("one traced loop of 128 steps", False, k),
                                ("one traced loop, XLA", True, k),
                                ("128 calls of 1 step", False, 1)]:
        learner = QLearner(build_q_network(env_spec(ENV), hidden=(256, 256)),
                           learning_rate=1e-3, max_grad_norm=10.0, jit_compile=jit)
        data = batch(per_call)
        learner.train(data)
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(k // per_call):
                learner.train(data)
            runs.append(k / (time.perf_counter() - start))
        out[name] = runs
    return out


def child_memory() -> dict:
    import tracemalloc

    import numpy as np

    from tfprod.rl.replay import ReplayBuffer

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    n = 100_000
    rng = np.random.default_rng(0)
    chunk = 1000
    obs = rng.normal(size=(chunk, 4)).astype(np.float32)
    args = (obs, rng.integers(0, 2, chunk), np.ones(chunk, np.float32), obs,
            np.full(chunk, 0.99, np.float32))
    before = rss()
    tracemalloc.start()
    buf = ReplayBuffer(n, (4,), np.float32, 2)
    for _ in range(n // chunk):
        buf.add(*args)
    traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    grown = rss() - before
    # What gymnasium hands over per transition: two float32[4] observations, an int64
    # action, a float64 reward, terminated and truncated bools.
    raw = n * (16 + 16 + 8 + 8 + 1 + 1)
    return {"transitions": n, "nbytes": buf.nbytes, "traced": traced, "rss_growth": grown,
            "raw": raw}


CHILDREN = {"tfprod": child_tfprod, "sb3": child_sb3}


def run_child(kind: str, *args) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONHASHSEED": "0"}
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{kind} child failed:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["process_seconds"] = time.perf_counter() - start
    return out


def _med(values) -> str:
    return f"{statistics.median(values):,.1f} ({min(values):,.1f}–{max(values):,.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--skip-agents", action="store_true",
                        help="only the acting, training-phase and memory parts")
    parser.add_argument("--skip-micro", action="store_true",
                        help="only the agents (to split seeds across runs)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    add_machine_args(parser)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind in CHILDREN:
            out = CHILDREN[kind](int(rest[0]), int(rest[1]))
        else:
            out = {"acting": child_acting, "phase": child_phase, "memory": child_memory}[kind]()
        out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(out))
        return

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.max_load is not None:
        wait_for_load(args.max_load, args.max_wait, console)
    report: dict = {"machine": machine_info(), "steps": args.steps, "seeds": args.seeds,
                    "command": " ".join(sys.argv), "runs": {}}
    if not args.skip_agents:
        for seed in args.seeds:
            for kind in ("tfprod", "sb3"):
                console.print(f"[dim]{kind} seed {seed}: {args.steps:,} steps[/]")
                report["runs"][f"{kind}/{seed}"] = r = run_child(kind, seed, args.steps)
                score = r["kept"]["mean"] if "kept" in r else r["last"]["mean"]
                console.print(f"[dim]  return {score:.1f}, learn {r['wall_seconds']:.1f} s[/]")
        print_agents(report, args.seeds, args.steps)
    if not args.skip_micro:
        for part in ("acting", "phase", "memory"):
            report[part] = run_child(part)
        print_micro(report)
    report["load_average_end"] = list(os.getloadavg())
    console.print(f"load average: start {report['machine']['load_average']}, end "
                  f"{report['load_average_end']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        console.print(f"wrote {args.json}")


def print_agents(report: dict, seeds: list[int], steps: int) -> None:
    runs = report["runs"]
    t = Table(title=f"{ENV}, {steps:,} env steps, 1 thread each; greedy return over 20 "
                    "episodes (mean)")
    for c in ("seed", "tfprod kept", "tfprod last", "SB3 last", "tfprod s", "SB3 s",
              "time ratio", "tfprod steps/s", "SB3 steps/s"):
        t.add_column(c, justify="right")
    for s in seeds:
        a, b = runs[f"tfprod/{s}"], runs[f"sb3/{s}"]
        t.add_row(str(s), f"{a['kept']['mean']:.1f}", f"{a['last']['mean']:.1f}",
                  f"{b['last']['mean']:.1f}", f"{a['wall_seconds']:.1f}",
                  f"{b['wall_seconds']:.1f}", f"{a['wall_seconds'] / b['wall_seconds']:.2f}",
                  f"{steps / a['wall_seconds']:,.0f}", f"{steps / b['wall_seconds']:,.0f}")
    console.print(t)
    solved = sum(runs[f"tfprod/{s}"]["kept"]["mean"] >= TARGET_RETURN for s in seeds)
    solved_sb3 = sum(runs[f"sb3/{s}"]["last"]["mean"] >= TARGET_RETURN for s in seeds)
    ratios = [runs[f"tfprod/{s}"]["wall_seconds"] / runs[f"sb3/{s}"]["wall_seconds"]
              for s in seeds]
    need = max(1, int(round(0.8 * len(seeds))))
    console.print(f"solved (greedy mean >= {TARGET_RETURN:.0f}): tfprod {solved}/{len(seeds)}, "
                  f"SB3 {solved_sb3}/{len(seeds)} -> "
                  f"{'PASS' if solved >= need else 'FAIL'} (target {need}/{len(seeds)})")
    console.print(f"wall time tfprod / SB3: median {_med(ratios)} -> "
                  f"{'PASS' if max(ratios) <= 1.0 else 'FAIL'} (target <= 1 on every seed)")


def print_micro(report: dict) -> None:
    t = Table(title="acting: Q-values of 1 observation (256x256 MLP), µs per call")
    t.add_column("path")
    t.add_column("µs/call (median, min–max of 5)", justify="right")
    for name, runs in report["acting"].items():
        if name != "max_rss_mb" and name != "process_seconds":
            t.add_row(name, _med(runs))
    console.print(t)
    t = Table(title="training phase: 128 gradient steps, batch 64, 256x256 MLP")
    t.add_column("how")
    t.add_column("gradient steps/s (median, min–max of 5)", justify="right")
    for name, runs in report["phase"].items():
        if name not in ("max_rss_mb", "process_seconds"):
            t.add_row(name, _med(runs))
    console.print(t)
    m = report["memory"]
    console.print(
        f"replay of {m['transitions']:,} CartPole transitions: arrays {m['nbytes'] / 1e6:.2f} MB "
        f"({m['nbytes'] / m['transitions']:.0f} B each), numpy allocated (tracemalloc) "
        f"{m['traced'] / 1e6:.2f} MB, resident growth {m['rss_growth'] / 1e6:.2f} MB; raw "
        f"transitions as gymnasium returns them {m['raw'] / 1e6:.2f} MB -> resident / raw "
        f"{m['rss_growth'] / m['raw']:.2f}x, resident / arrays "
        f"{m['rss_growth'] / m['nbytes']:.2f}x "
        f"-> {'PASS' if m['rss_growth'] <= 1.2 * m['raw'] else 'FAIL'} (target <= 1.2x)")


if __name__ == "__main__":
    main()
