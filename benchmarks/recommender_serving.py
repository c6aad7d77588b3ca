"""Top-k recommendation through ``tfprod serve``: brute force in the graph, by catalog size.

For each catalog size (``--items``), a :class:`tfprod.models.Recommender` (``--users`` users,
``--dim`` wide, random weights: the computation does not depend on what was learned) is
exported with ``export_recommender`` (``recommend``: one ``(batch, dim) x (dim, items)``
matmul, the seen items set to -inf, ``tf.math.top_k``). Measured:

- in process: the exported ``recommend`` signature, one user per call (no HTTP): the model's
  own time, p50 and p99 over ``--calls`` calls, per catalog size;
- through ``tfprod serve`` (REST, the catalog of ``--serve-items``), with and without
  ``--enable_batching``: ``wrk`` (a second process) at ``--connections`` concurrent
  connections for ``--duration`` seconds, ``--repeats`` runs interleaved; every request asks
  for one random user's top ``--k`` with ``--seen`` random items excluded
  (``{"signature_name": "recommend", "instances": [{"user_id": u, "seen": [...]}]}``).
  Medians over the runs, with min-max.

Target (issue 16): p99 <= 10 ms at 16 connections with 100,000 items. Where an approximate
index takes over: where the in-process time per user eats the latency budget (see the
printed verdict).

Usage::

    .venv/bin/python benchmarks/recommender_serving.py --json /tmp/rec.json
    .venv/bin/python benchmarks/recommender_serving.py --quick   # smoke run, ~1 minute

Client and server share the machine; run it quiet (``--max-load``). Servers are stopped by PID.
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

import numpy as np
from rich.console import Console
from rich.table import Table

from machine import add_machine_args, machine_info, wait_for_load
from serving import Run, Server, Wrk, free_port
from serving_tools import WRK_DONE_LUA
from tfprod import runtime

console = Console(width=120)
MODEL = "rec"
PATH = f"/v1/models/{MODEL}:predict"

_LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local users, items, seen = {users}, {items}, {seen}
local thread_seed = 0

function setup(thread)
  thread_seed = thread_seed + 1
  thread:set("seed", thread_seed)
end

function init(args)
  math.randomseed(seed * 7919)
end

request = function()
  local parts = {{}}
  for i = 1, seen do parts[i] = tostring(math.random(0, items - 1)) end
  local body = '{{"signature_name":"recommend","instances":[{{"user_id":' ..
    math.random(0, users - 1) .. ',"seen":[' .. table.concat(parts, ",") .. ']}}]}}'
  return wrk.format(nil, nil, nil, body)
end

""" + WRK_DONE_LUA


def export(base: Path, users: int, items: int, dim: int, k: int) -> str:
    """A recommender with random weights, exported with both signatures."""
    from tfprod.export.recommender import export_recommender
    from tfprod.models import Recommender

    rng = np.random.default_rng(0)
    model = Recommender(users, items, dim)
    model.build()
    e = model.embedding
    e.user_table.assign(rng.normal(0, 0.3, e.user_table.shape).astype(np.float32))
    e.item_table.assign(rng.normal(0, 0.3, e.item_table.shape).astype(np.float32))
    e.item_bias.assign(rng.normal(0, 0.1, e.item_bias.shape).astype(np.float32))
    model.user_trained.assign(np.ones(users, np.float32))
    return export_recommender(model, base, k=k).path


def in_process(version: str, users: int, items: int, seen: int, calls: int) -> dict:
    """p50/p99 (ms) of the ``recommend`` signature, one user per call."""
    import tensorflow as tf

    fn = tf.saved_model.load(version).signatures["recommend"]
    rng = np.random.default_rng(1)

    def call():
        return fn(**{"user_id": tf.constant([rng.integers(users)], tf.int64),
                     "seen.values": tf.constant(rng.integers(0, items, seen), tf.int64),
                     "seen.row_lengths": tf.constant([seen], tf.int64)})

    for _ in range(20):
        call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()["item_ids"].numpy()
        times.append(time.perf_counter() - start)
    p50, p99 = np.percentile(times, [50, 99]) * 1e3
    return {"items": items, "p50_ms": float(p50), "p99_ms": float(p99)}


def server(name: str, base: Path, tmp: Path, args: argparse.Namespace, *,
           batching: bool) -> Server:
    exe = Path(sys.executable).parent / "tfprod"
    port = free_port()
    command = [str(exe), "serve", "--port", str(free_port()), "--rest_api_port", str(port),
               "--rest_api_host", "127.0.0.1", "--grpc_host", "127.0.0.1", "--model_name",
               MODEL, "--model_base_path", str(base)]
    if args.intra_op:
        command += [f"--tensorflow_intra_op_parallelism={args.intra_op}"]
    if batching:
        params = tmp / "batching.config"
        params.write_text(batching_text(args))
        command += ["--enable_batching", "--batching_parameters_file", str(params)]
    return Server(name, command, port, "/v1/ready", tmp / f"{name}.log")


def batching_text(args: argparse.Namespace) -> str:
    return (f"max_batch_size {{ value: {args.max_batch_size} }}\n"
            f"batch_timeout_micros {{ value: {args.batch_timeout_micros} }}\n"
            f"num_batch_threads {{ value: {args.batch_threads} }}\n"
            "max_enqueued_batches { value: 64 }\n")


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", default="10000,100000,1000000",
                   help="catalog sizes measured in process (comma-separated)")
    p.add_argument("--serve-items", type=int, default=100_000, help="catalog size served")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seen", type=int, default=20, help="items excluded per request")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--calls", type=int, default=300, help="in-process calls per size")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--batch-timeout-micros", type=int, default=1000)
    p.add_argument("--batch-threads", type=int, default=1)
    p.add_argument("--intra-op", type=int, default=0,
                   help="--tensorflow_intra_op_parallelism of the servers (0: TF's default)")
    p.add_argument("--servers", default="tfprod,tfprod-batching",
                   help="which servers to measure (comma-separated)")
    p.add_argument("--quick", action="store_true", help="small sizes, short runs")
    add_machine_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.items, args.serve_items, args.users = "10000,100000", 100_000, 1000
        args.duration, args.repeats, args.calls = 3, 1, 50
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runtime.configure(verbose=False)
    load = wait_for_load(args.max_load, args.max_wait, console) if args.max_load else None
    info = machine_info()
    info["load_before"] = load
    tmp = Path(tempfile.mkdtemp(prefix="tfprod-rec-bench-"))
    sizes = [int(n) for n in args.items.split(",")]
    console.print(f"exporting catalogs of {sizes} items ...")
    bases = {n: tmp / f"rec-{n}" for n in sorted(set(sizes) | {args.serve_items})}
    versions = {n: export(b, args.users, n, args.dim, args.k) for n, b in bases.items()}
    inproc = [in_process(versions[n], args.users, n, args.seen, args.calls) for n in sizes]

    wrk = Wrk(threads=2, timeout_s=10.0)
    script = tmp / "recommend.lua"
    script.write_text(_LUA.format(users=args.users, items=args.serve_items, seen=args.seen))
    servers = [server(name, bases[args.serve_items], tmp, args,
                      batching=name == "tfprod-batching")
               for name in args.servers.split(",")]
    runs: dict[str, list[Run]] = {s.name: [] for s in servers}
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait_ready(180)
        for s in servers:  # warm up the serving path
            wrk.run(s.url + PATH, script, _Load(args.connections), 2)
        for _ in range(args.repeats):
            for s in servers:
                s.check_alive()
                runs[s.name].append(wrk.run(s.url + PATH, script, _Load(args.connections),
                                            args.duration))
    finally:
        for s in servers:
            s.stop()
    info["load_after"] = list(os.getloadavg())
    summary = {name: {"p50_ms": spread([r.p50_ms for r in rs]),
                      "p99_ms": spread([r.p99_ms for r in rs]),
                      "rps": spread([r.rps for r in rs]),
                      "failed": sum(r.failed for r in rs)} for name, rs in runs.items()}
    report(args, inproc, summary)
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": info, "args": vars(args) | {"json": None},
                                         "in_process": inproc, "served": summary,
                                         "runs": {k: [r.to_json() for r in v]
                                                  for k, v in runs.items()}}, indent=2,
                                        default=str))
        console.print(f"wrote {args.json}")
    return 0


class _Load:
    """What :meth:`Wrk.run` needs of a load: connections, and one instance per request."""

    def __init__(self, connections: int) -> None:
        self.connections, self.instances = connections, 1


def report(args: argparse.Namespace, inproc: list[dict], summary: dict) -> None:
    t = Table(title=f"recommend signature in process (1 user, dim {args.dim}, top {args.k}, "
                    f"{args.seen} seen)")
    for c in ("items", "p50", "p99", "max users/s per core"):
        t.add_column(c, justify="right")
    for r in inproc:
        t.add_row(f"{r['items']:,}", f"{r['p50_ms']:.2f} ms", f"{r['p99_ms']:.2f} ms",
                  f"{1000 / r['p50_ms']:,.0f}")
    console.print(t)
    t = Table(title=f"through tfprod serve (REST): {args.serve_items:,} items, "
                    f"{args.connections} connections, {args.repeats} x {args.duration} s; "
                    f"batching: {' '.join(batching_text(args).split())}; intra-op "
                    f"{args.intra_op or 'default'}")
    for c in ("server", "p50 ms", "p99 ms (min-max)", "req/s", "failed", "p99 <= 10 ms"):
        t.add_column(c, justify="right")
    for name, s in summary.items():
        p99 = s["p99_ms"]
        t.add_row(name, f"{s['p50_ms']['median']:.2f}",
                  f"{p99['median']:.2f} ({p99['min']:.2f}-{p99['max']:.2f})",
                  f"{s['rps']['median']:,.0f}", str(s["failed"]),
                  "yes" if p99["median"] <= 10 else "no")
    console.print(t)
    served = next((r for r in inproc if r["items"] == args.serve_items), None)
    if served is not None:
        console.print(f"model time per user at {args.serve_items:,} items: "
                      f"{served['p50_ms']:.2f} ms; at {args.connections} connections the "
                      f"10 ms budget holds {10 / served['p50_ms']:.1f} users' brute force "
                      "per core")


if __name__ == "__main__":
    sys.exit(main())
