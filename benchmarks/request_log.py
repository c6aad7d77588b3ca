"""``tfprod serve`` with the request log on vs off, and with drift computed in the background.

Trains and exports the digits CNN as ``benchmarks/serving.py`` does, then starts three
``tfprod serve --enable_batching`` processes on the same model:

- ``log-off``: no request log;
- ``log-on``: ``--request_log=<tmp>/log-on.db`` (SQLite, sampling rate 1.0: every request is
  logged), ``--monitoring_interval_seconds=0``;
- ``log+drift``: the same, plus drift of the last 5,000 logged rows against the reference every
  ``--interval`` seconds (default 5 s, twelve times the default rate, to make its cost visible).

``wrk`` drives small requests (1 instance, 64 connections) and large ones (64 instances, 8
connections), ``--repeats`` runs interleaved across servers after each went idle; medians and
min-max are reported, and each server as a multiple of ``log-off``. Afterwards the log is
checked: every request wrk completed was written or counted as dropped.

Targets (issue 12): log-on small requests >= 0.9x log-off's req/s, p99 <= 1.2x; log+drift costs
< 5% of log-on's throughput.

    .venv/bin/python benchmarks/request_log.py --json /tmp/request_log.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
from pathlib import Path

from rich.table import Table

import serving as sv
from machine import add_machine_args, machine_info, wait_for_load

NAMES = ("log-off", "log-on", "log+drift")
LOADS = [sv.SMALL[-1], sv.LARGE]  # 1 instance at c=64; 64 instances at c=8


def make_servers(tmp: Path, model: dict, batching_file: Path, interval: float) -> list:
    servers = []
    for name in NAMES:
        base = tmp / f"base-{name}"
        shutil.copytree(model["version_1"], base / "1")
        server = sv.tfprod_server(name, base, tmp / f"{name}.log", batching_file)
        if name != "log-off":
            server.command += [f"--request_log={tmp / (name + '.db')}",
                               f"--monitoring_interval_seconds="
                               f"{interval if name == 'log+drift' else 0}"]
        servers.append(server)
    return servers


def logged(tmp: Path, name: str) -> int:
    with sqlite3.connect(tmp / f"{name}.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM request_log").fetchone()[0])


def print_profile(profile: dict) -> None:
    """Server CPU per small request by activity, log-off beside log-on (py-spy)."""
    table = Table(title="Server CPU per small request (py-spy, c=64, 1 instance)")
    table.add_column("activity")
    for name in profile:
        table.add_column(f"{name} us")
    kinds = sorted({k for p in profile.values() for k in p["us"]},
                   key=lambda k: -max(p["us"].get(k, 0.0) for p in profile.values()))
    for kind in kinds:
        table.add_row(kind, *(f"{p['us'].get(kind, 0.0):.1f}" for p in profile.values()))
    table.add_row("total", *(f"{p['cpu_us']:.1f}" for p in profile.values()))
    sv.console.print(table)
    for name, p in profile.items():
        sv.console.print(f"{name} threads: " + ", ".join(
            f"{t} {share:.0%}" for t, share in p["threads"].items()))
    sv.console.print("CPU us per request by thread (and writer process), from /proc: " + "; ".join(
        f"{name}: " + ", ".join(f"{t} {us:.1f}" for t, us in sorted(
            p["thread_us"].items(), key=lambda kv: -kv[1]) if us >= 0.5)
        for name, p in profile.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile-seconds", type=int, default=0,
                        help="then py-spy log-off and log-on under the small load this long")
    add_machine_args(parser)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    console = sv.console
    tmp = Path(tempfile.mkdtemp(prefix="tfprod-request-log-"))
    servers = []
    try:
        model = sv.train_and_export(tmp, 8, args.epochs, args.seed, version_2=False)
        bodies = sv.write_bodies(tmp, model["x_test"])
        scripts = {k: sv.write_lua(p) for k, p in bodies.items()}
        batching_file = tmp / "batching.config"
        batching_file.write_text("max_batch_size { value: 64 }\nbatch_timeout_micros { value: "
                                 "5000 }\nnum_batch_threads { value: 1 }\n"
                                 "max_enqueued_batches { value: 32 }\n")
        servers = make_servers(tmp, model, batching_file, args.interval)
        for s in servers:
            s.start()
        for s in servers:
            s.wait_ready(sv.READY_TIMEOUT_S)
        if args.max_load is not None:
            wait_for_load(args.max_load, args.max_wait, console)
        load_start = list(os.getloadavg())
        wrk = sv.Wrk(1, 30.0)
        runs = sv.measure(servers, wrk, scripts, LOADS, argparse.Namespace(
            repeats=args.repeats, warmup=args.warmup, duration=args.duration), 64)
        load_end = list(os.getloadavg())
        profile = sv.profile_servers(servers, wrk, scripts[1],
                                     args.profile_seconds, tmp, names=NAMES[:2]) \
            if args.profile_seconds else {}
        completed = {s.name: sum(r.requests for ld in runs[s.name].values() for r in ld)
                     for s in servers}
    finally:
        for s in servers:
            s.stop()
    counts = {n: logged(tmp, n) for n in NAMES[1:]}
    table = Table(title="tfprod serve --enable_batching, request log on/off (wrk, 127.0.0.1)")
    for c in ("server", "load", "req/s median (min-max)", "x log-off", "p99 ms", "p99 x off",
              "cpu us/req"):
        table.add_column(c)
    results = {}
    for name in NAMES:
        for load in LOADS:
            rs = runs[name][load.name]
            rps = [r.rps for r in rs]
            p99 = [r.p99_ms for r in rs]
            off = runs["log-off"][load.name]
            x = statistics.median(rps) / statistics.median([r.rps for r in off])
            px = statistics.median(p99) / statistics.median([r.p99_ms for r in off])
            cpu = [r.cpu_us for r in rs]
            results[f"{name}/{load.name}"] = {"rps": rps, "p99_ms": p99, "x_off_rps": x,
                                              "x_off_p99": px, "cpu_us": cpu}
            table.add_row(name, load.name, f"{statistics.median(rps):,.0f} ({min(rps):,.0f}-"
                          f"{max(rps):,.0f})", f"{x:.2f}", f"{statistics.median(p99):.1f} "
                          f"({min(p99):.1f}-{max(p99):.1f})", f"{px:.2f}",
                          f"{statistics.median(cpu):,.0f}")
    console.print(table)
    drift_cost = {ld.name: statistics.median([r.rps for r in runs["log+drift"][ld.name]]) /
                  statistics.median([r.rps for r in runs["log-on"][ld.name]])
                  for ld in LOADS}
    console.print(f"log+drift / log-on throughput: {drift_cost}")
    console.print(f"requests completed (incl. warm-up runs not counted by wrk: logged may be "
                  f"more): {completed}; rows in the logs: {counts}")
    if profile:
        print_profile(profile)
    info = machine_info()
    console.print(f"load average at start: {load_start}, end: {load_end}; machine: {info}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "load_start": load_start,
                                         "load_end": load_end,
                                         "results": results, "drift_cost": drift_cost,
                                         "logged": counts, "completed": completed,
                                         "profile": profile}, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
