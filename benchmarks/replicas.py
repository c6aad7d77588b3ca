"""``tfprod serve`` replicas behind nginx, all logging to one PostgreSQL: throughput of 1 vs 2
replicas, and a rolling update under load.

Setup: the digits classifier of ``soak.py`` (64 -> 64 -> 10, exported twice: versions A and B),
a PostgreSQL and nginx started for the run as in the tests (``tests/postgres_server.py``,
``tests/nginx_server.py``: unprivileged, loopback, ``proxy_next_upstream ... non_idempotent``,
upstream keep-alive), two ``tfprod serve`` replicas with ``--request_log=postgresql://...``,
``--drain_seconds=10``. wrk (one thread, 32 connections, one image per request) drives:

- ``1 direct``: replica A without nginx (the baseline);
- ``1 nginx``: nginx with A alone in its upstream;
- ``2 nginx``: nginx with A and B;

``--repeats`` runs of ``--duration`` s each, interleaved. Then the rolling update: wrk on
``2 nginx`` for ``--roll-seconds``; a steady window first, then each replica in turn gets
SIGTERM (readiness 503, drain, exit 0), is restarted on the same port and waited for; version B
is published after the first one. Failed requests (non-2xx + socket errors) and p99 of the
steady run vs the run with the roll. Finally every answered request is in the PostgreSQL log.

    flock -x /tmp/tfprod-quiet.lock .venv/bin/python benchmarks/replicas.py --json /tmp/r.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.table import Table

from machine import add_machine_args, machine_info, wait_for_load
from serving_tools import Load, Server, Wrk, free_port, http, write_lua
from soak import MODEL, TFPROD, console, export_versions

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from nginx_server import NginxServer  # noqa: E402  (the tests' real nginx)
from postgres_server import PostgresServer  # noqa: E402

CONNECTIONS = 32


def replica(name: str, base: Path, url: str, tmp: Path) -> Server:
    port = free_port()
    return Server(name, [*TFPROD, "serve", f"--model_name={MODEL}", f"--model_base_path={base}",
                         f"--port={free_port()}", f"--rest_api_port={port}",
                         "--rest_api_host=127.0.0.1", "--grpc_host=127.0.0.1",
                         f"--request_log={url}", "--file_system_poll_wait_seconds=1",
                         "--monitoring_interval_seconds=0", "--drain_seconds=10"],
                  port, "/v1/ready", tmp / f"{name}.log")


def roll(replicas: list[Server], base: Path, source_b: Path, delay: float,
         events: list[str]) -> None:
    """SIGTERM, wait for exit 0, restart and wait ready, each replica in turn; B mid-roll."""
    time.sleep(delay)
    for i, r in enumerate(replicas):
        t0 = time.monotonic()
        r.proc.send_signal(signal.SIGTERM)
        status = r.proc.wait(60)
        events.append(f"{r.name}: SIGTERM -> exit {status} in {time.monotonic() - t0:.1f} s")
        if i == 0:
            shutil.copytree(source_b, base / ".tmp-2")
            os.rename(base / ".tmp-2", base / "2")
            events.append("version 2 published")
        r.start()
        ready = r.wait_ready(180)
        events.append(f"{r.name}: restarted, ready in {ready:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--roll-seconds", type=int, default=90)
    add_machine_args(parser)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="tfprod-replicas-"))
    pg = PostgresServer()
    servers: list[Server] = []
    balancers: list[NginxServer] = []
    results: dict = {}
    try:
        url = pg.start()
        source_a, source_b, x = export_versions(tmp)
        base = tmp / MODEL
        base.mkdir()
        shutil.copytree(source_a, base / "1")
        servers = [replica(n, base, url, tmp) for n in ("A", "B")]
        for s in servers:
            s.start()
        for s in servers:
            s.wait_ready(180)
        one, two = NginxServer(), NginxServer()
        balancers = [one, two]
        one.start([servers[0].port])
        two.start([s.port for s in servers])
        body = tmp / "body.json"
        body.write_text(json.dumps({"instances": x[:1].tolist()}))
        script = write_lua(body)
        path = f"/v1/models/{MODEL}:predict"
        targets = {"1 direct": servers[0].url + path, "1 nginx": one.url + path,
                   "2 nginx": two.url + path}
        for target in targets.values():
            assert http("POST", target, body.read_bytes())[0] == 200, target
        if args.max_load is not None:
            wait_for_load(args.max_load, args.max_wait, console)
        machine = machine_info()
        wrk = Wrk(1, 10.0)
        load = Load("c32", 1, CONNECTIONS)
        runs: dict[str, list] = {name: [] for name in targets}
        answered = 0
        for target in targets.values():  # warm-up
            answered += wrk.run(target, script, load, 2).requests
        for _ in range(args.repeats):
            for name, target in targets.items():
                run = wrk.run(target, script, load, args.duration)
                runs[name].append(run)
                answered += run.requests - run.non_2xx
        for name, rs in runs.items():
            rps = [r.rps for r in rs]
            results[name] = {"rps": rps, "p99_ms": [r.p99_ms for r in rs],
                             "failed": sum(r.failed for r in rs),
                             "client_cores": statistics.median(r.client_cores for r in rs)}
        # The rolling update, against a steady run of the same length.
        steady = wrk.run(targets["2 nginx"], script, load, args.roll_seconds)
        answered += steady.requests - steady.non_2xx
        events: list[str] = []
        roller = threading.Thread(target=roll, args=(servers, base, source_b, 3.0, events))
        started = wrk.start(targets["2 nginx"], script, CONNECTIONS, args.roll_seconds)
        roll_t0 = time.monotonic()
        roller.start()
        roller.join(args.roll_seconds + 300)
        roll_s = time.monotonic() - roll_t0
        rolled = wrk.finish(started, args.roll_seconds, 1)
        answered += rolled.requests - rolled.non_2xx
        if roll_s > args.roll_seconds:
            console.print(f"[red]the roll took {roll_s:.0f} s, longer than wrk's "
                          f"{args.roll_seconds} s: raise --roll-seconds[/]")
        results["roll"] = {"steady": steady.to_json(), "rolling": rolled.to_json(),
                           "events": events, "roll_seconds": roll_s,
                           "p99_ratio": rolled.p99_ms / steady.p99_ms}
        time.sleep(2)
        for s in servers:
            s.stop()  # drains, writes what is queued
        from tfprod.monitor.store import open_store

        store = open_store(url, create=False)
        results["logged_rows"] = store.count(MODEL)
        store.close()
        results["answered"] = answered
        results["machine"] = machine
    finally:
        for b in balancers:
            b.cleanup()
        for s in servers:
            s.stop()
        pg.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    base_rps = statistics.median(results["1 direct"]["rps"])
    table = Table(title=f"tfprod serve replicas, wrk c={CONNECTIONS}, 1 image per request, "
                        f"{args.repeats} x {args.duration} s")
    for c in ("setup", "req/s median (min-max)", "x 1 direct", "p99 ms", "failed"):
        table.add_column(c)
    for name in targets:
        r = results[name]
        rps = r["rps"]
        r["x_direct"] = statistics.median(rps) / base_rps
        table.add_row(name, f"{statistics.median(rps):,.0f} ({min(rps):,.0f}-{max(rps):,.0f})",
                      f"{r['x_direct']:.2f}", f"{statistics.median(r['p99_ms']):.1f}",
                      str(r["failed"]))
    console.print(table)
    ro = results["roll"]
    console.print(f"rolling update ({ro['roll_seconds']:.0f} s): failed "
                  f"{ro['rolling']['non_2xx'] + ro['rolling']['socket_errors']} of "
                  f"{ro['rolling']['requests']:,}; p99 steady {ro['steady']['p99_ms']:.1f} ms, "
                  f"during the roll {ro['rolling']['p99_ms']:.1f} ms ({ro['p99_ratio']:.2f}x); "
                  f"req/s {ro['steady']['rps']:,.0f} -> {ro['rolling']['rps']:,.0f}")
    for e in ro["events"]:
        console.print(f"  {e}")
    console.print(f"request log: {results['logged_rows']:,} rows; wrk counted "
                  f"{results['answered']:,} answers (answers in flight when a wrk run ends are "
                  f"logged but not counted); load average {machine['load_average']}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
