"""``tfprod serve`` under load: three payload sizes, three concurrencies, TensorFlow and LiteRT.

For each payload (64, 1,024 and 4,096 numbers per instance: the digits at 8x8, 32x32 and
64x64 pixels) the script trains ``small_cnn((side, side, 1), 10)`` on ``load_digits(side)``
for ``--epochs`` epochs, exports it in TF Serving's layout (``BASE/1/``, with warmup records)
and saves it as ``.keras``, then starts these servers, each its own process on a 127.0.0.1
port:

- ``noop``: FastAPI parsing the body into an array and returning a constant answer of the right
  size: the HTTP + JSON ceiling of the machine for that payload
  (``serving_baselines/fastapi_noop.py``);
- ``before``: ``tfprod serve --enable_batching`` from the source tree of ``--before REF`` (a git
  revision of this repository, unpacked with ``git archive``, same interpreter and packages):
  the server as it was, measured in the same run;
- ``batching``: ``tfprod serve --enable_batching``; ``batching-litert``: the same with
  ``--runtime=litert``;
- ``tfprod`` and ``litert``: the same two without batching;
- ``fastapi`` (FastAPI + a ``tf.function`` per request) and ``flask`` (Flask +
  ``model.predict``) on request (``--servers``).

Batching parameters come from the flags (default: max_batch_size 64, batch_timeout_micros 5000,
num_batch_threads 1, max_enqueued_batches 32). Every server answers TF Serving's ``POST
/v1/models/digits:predict`` with row bodies (uint8 pixels as JSON numbers). The loads are 1
instance per request at concurrency 1, 16 and 64, and 64 instances per request at concurrency 8
(``--large-payloads``), ``--duration`` seconds per run, ``--repeats`` runs interleaved across
the servers of a payload (drift hits all alike); medians with min-max.

The load generator is wrk, one thread, a separate process; its CPU time is measured
(``getrusage`` of the child) and reported beside the server's: on 2 cores the two share the
machine, and wrk stays well below one core. The server's CPU per request is its user + system
time over a run (``/proc/PID/stat``) divided by the requests completed. Before every run the
script waits until the payload's servers are idle (under 0.05 cores for 0.25 s).

Also measured: each model in-process (the exported signature, and the same signature converted
to LiteRT, at batch 1 and 64); with ``--profile-seconds``, py-spy samples of ``before``,
``batching`` and ``batching-litert`` under the 64-number load at concurrency 64, as server CPU
per request by activity; version swaps under load on both batching servers (``--swaps``: a
staged copy of version 2 renamed into the base path while wrk runs in 1-second windows).

Targets (issue 10) are printed at the end; ``--markdown FILE`` writes the tables for
docs/benchmarks.md.

Usage::

    apt-get install wrk; .venv/bin/pip install -e ".[bench]" py-spy
    .venv/bin/python benchmarks/serving.py --before 857ae7a --json serving.json
    .venv/bin/python benchmarks/serving.py --quick          # smoke run, a few minutes

Run it on an idle machine (``--max-load 0.8`` waits for one). Every server is stopped by PID at
the end, on errors and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from machine import add_machine_args, machine_info, wait_for_load
from serving_tools import (
    Load,
    Run,
    Server,
    Wrk,
    cpu_seconds,
    free_port,
    http,
    profile_breakdown,
    py_spy,
    record,
    spread,
    thread_cpu,
    wait_idle,
    write_lua,
)
from tfprod import runtime

console = Console(width=160)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BASELINES = HERE / "serving_baselines"
MODEL_NAME = "digits"
PREDICT_PATH = f"/v1/models/{MODEL_NAME}:predict"
STATUS_PATH = f"/v1/models/{MODEL_NAME}"
STAGING = ".tmp-export-benchmark"  # hidden: the servers only look at numbered folders
READY_TIMEOUT_S = 240.0

PAYLOADS = {64: 8, 1024: 32, 4096: 64}  # numbers per instance -> image side
SERVER_LABELS = {
    "noop": "FastAPI no-op (parse, constant answer)",
    "before": "tfprod serve --enable_batching, before",
    "batching": "tfprod serve --enable_batching",
    "batching-litert": "tfprod serve --enable_batching --runtime=litert",
    "tfprod": "tfprod serve",
    "litert": "tfprod serve --runtime=litert",
    "fastapi": "FastAPI + tf.function",
    "flask": "Flask + model.predict",
}
DEFAULT_SERVERS = ("noop", "before", "batching", "batching-litert", "tfprod", "litert")
SMALL = tuple(Load(f"c{c}", 1, c) for c in (1, 16, 64))
LARGE = Load("large", 64, 8)
PROFILED = ("before", "batching", "batching-litert")


# ------------------------------------------------------------------------------ models


def train_and_export(tmp: Path, side: int, epochs: int, seed: int, *, version_2: bool) -> dict:
    """Trains the digits CNN on ``side`` x ``side`` images; writes ``model.keras``, ``base/1``
    and, with ``version_2``, ``next/2`` (one more epoch)."""
    import keras

    from tfprod.data.sample import load_digits
    from tfprod.export import export_saved_model
    from tfprod.models import small_cnn

    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = load_digits(side)
    model = small_cnn((side, side, 1), 10)
    t0 = time.perf_counter()
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0)
    train_s = time.perf_counter() - t0
    accuracy = float(model.evaluate(x_test, y_test, verbose=0)[1])
    folder = tmp / f"model-{side}"
    folder.mkdir()
    model.save(folder / "model.keras")
    v1 = export_saved_model(model, folder / "base", version=1, reference_data=x_train[:256])
    expected = model.predict(x_test[:64], verbose=0)
    if version_2:
        model.fit(x_train, y_train, batch_size=32, epochs=1, verbose=0)
        export_saved_model(model, folder / "next", version=2, reference_data=x_train[:256])
    return {"keras": folder / "model.keras", "version_1": Path(v1.path),
            "version_2": folder / "next" / "2", "x_test": x_test, "expected": expected,
            "accuracy": accuracy, "train_seconds": train_s, "params": model.count_params()}


def write_bodies(folder: Path, x: np.ndarray) -> dict[int, Path]:
    """Request bodies of 1 and 64 instances (TF Serving row format, JSON integers)."""
    paths = {}
    for n in (1, 64):
        path = folder / f"body-{n}.json"
        path.write_text(json.dumps({"instances": x[:n].tolist()}, separators=(",", ":")))
        paths[n] = path
    return paths


def in_process(version_dir: Path, x: np.ndarray, seconds: float) -> dict:
    """The exported signature and its LiteRT conversion, called in-process: batch-1 latency
    (median of the calls in ``seconds``) and batch-64 samples/s."""
    import tensorflow as tf

    from tfprod.serve.litert import LiteRTFunction, convert_saved_model

    fn = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    (name,) = fn.structured_input_signature[1]
    content = convert_saved_model(str(version_dir), ["serving_default"])
    lite = LiteRTFunction(content, "serving_default", {name: name},
                          {k: k for k in fn.structured_outputs}, num_threads=2)
    calls = {"tensorflow": lambda b: fn(**{name: tf.constant(b)}),
             "litert": lambda b: lite({name: b})}
    out = {}
    for kind, call in calls.items():
        one, batch = x[:1].astype(np.float32), x[:64].astype(np.float32)
        for _ in range(20):
            call(one)
            call(batch)
        times, t_end = [], time.perf_counter() + seconds / 2
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            call(one)
            times.append(time.perf_counter() - t0)
        n, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds / 2:
            call(batch)
            n += 1
        out[kind] = {"batch1_us": 1e6 * statistics.median(times),
                     "batch64_sps": n * len(batch) / elapsed}
    return out


def batching_text(args: argparse.Namespace) -> str:
    return (f"max_batch_size {{ value: {args.max_batch_size} }}\n"
            f"batch_timeout_micros {{ value: {args.batch_timeout_micros} }}\n"
            f"num_batch_threads {{ value: {args.num_batch_threads} }}\n"
            f"max_enqueued_batches {{ value: {args.max_enqueued_batches} }}\n")


# ------------------------------------------------------------------------------ servers


def unpack_before(ref: str, tmp: Path) -> tuple[Path, str]:
    """The ``src`` tree of git revision ``ref`` of this repository, and its full hash."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", ref + "^{commit}"],
                            capture_output=True, text=True)
    if commit.returncode != 0:
        raise SystemExit(f"--before {ref}: not a commit of {REPO} ({commit.stderr.strip()})")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit.stdout.strip(), "src"],
                             capture_output=True, check=True).stdout
    target = tmp / "before"
    target.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target / "src", commit.stdout.strip()


def tfprod_server(name: str, base: Path, log: Path, batching_file: Path | None,
                  *, runtime_flag: str = "tensorflow", source: Path | None = None) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "tfprod", "serve", "--port", str(free_port()),
               "--rest_api_port", str(port), "--rest_api_host", "127.0.0.1", "--grpc_host",
               "127.0.0.1", "--model_name", MODEL_NAME, "--model_base_path", str(base),
               "--file_system_poll_wait_seconds", "1"]
    if runtime_flag != "tensorflow":
        command.append(f"--runtime={runtime_flag}")
    if batching_file is not None:
        command += ["--enable_batching", "--batching_parameters_file", str(batching_file)]
    env = {"PYTHONPATH": str(source)} if source is not None else {}
    return Server(name, command, port, "/v1/ready", log, env=env)


def make_servers(names: list[str], folder: Path, model: dict, batching_file: Path,
                 before_src: Path | None) -> list[Server]:
    """The servers of one payload; each tfprod server gets its own copy of the base path."""
    servers = []
    for name in names:
        log = folder / f"{name}.log"
        if name in ("noop", "fastapi", "flask"):
            script = {"noop": "fastapi_noop.py", "fastapi": "fastapi_function.py",
                      "flask": "flask_predict.py"}[name]
            port = free_port()
            extra = [] if name == "noop" else ["--model", str(model["keras"])]
            servers.append(Server(name, [sys.executable, str(BASELINES / script), "--port",
                                         str(port), "--model_name", MODEL_NAME, *extra],
                                  port, "/ready", log))
            continue
        if name == "before" and before_src is None:
            continue
        base = folder / f"base-{name}"
        shutil.copytree(model["version_1"], base / "1")
        servers.append(tfprod_server(
            name, base, log, batching_file if name in ("before", "batching", "batching-litert")
            else None, runtime_flag="litert" if "litert" in name else "tensorflow",
            source=before_src if name == "before" else None))
    return servers


def check_answers(servers: list[Server], bodies: dict[int, Path], expected: np.ndarray) -> None:
    """Each server answers both bodies with 200 and 10 scores per instance; the model servers'
    scores equal the in-process model's (LiteRT within float rounding)."""
    for s in servers:
        for n, path in bodies.items():
            status, body = http("POST", s.url + PREDICT_PATH, path.read_bytes(), timeout=60)
            if status != 200:
                raise RuntimeError(f"{s.name}: {n}-instance request -> {status} {body[:300]!r}")
            scores = np.asarray(json.loads(body)["predictions"])
            if scores.shape != (n, 10):
                raise RuntimeError(f"{s.name}: predictions of shape {scores.shape}")
            if s.name != "noop" and not np.allclose(scores, expected[:n], atol=1e-4):
                raise RuntimeError(f"{s.name}: scores differ from the in-process model's by "
                                   f"{np.abs(scores - expected[:n]).max():.2g}")


# ------------------------------------------------------------------------------ measurements


def measure(servers: list[Server], wrk: Wrk, scripts: dict[int, Path], loads: list[Load],
            args: argparse.Namespace, payload: int) -> dict[str, dict[str, list[Run]]]:
    """``--repeats`` wrk runs of each load on each server, interleaved; a warm-up first."""
    runs: dict[str, dict[str, list[Run]]] = {s.name: {ld.name: [] for ld in loads}
                                             for s in servers}
    if args.warmup:
        for s in servers:
            for load in (SMALL[-1], *([LARGE] if LARGE in loads else [])):
                wait_idle(servers, console=console)
                wrk.run(s.url + PREDICT_PATH, scripts[load.instances], load, args.warmup)
    for repeat in range(args.repeats):
        for load in loads:
            for s in servers:
                s.check_alive()
                waited = wait_idle(servers, console=console)
                run = wrk.run(s.url + PREDICT_PATH, scripts[load.instances], load,
                              args.duration, server_pid=s.pid)
                run.idle_wait_s = waited
                runs[s.name][load.name].append(run)
                console.print(
                    f"  {payload:5} numbers, repeat {repeat + 1}/{args.repeats} {load.name:5} "
                    f"{s.name:15} {run.rps:8,.0f} req/s {run.sps:8,.0f} samples/s  p50 "
                    f"{run.p50_ms:7.2f} ms  p99 {run.p99_ms:7.1f} ms  cpu {run.cpu_us:6.0f} "
                    f"us/req  wrk {run.client_cores:.2f} cores  failed {run.failed}",
                    style="dim", highlight=False)
    return runs


def summarize(runs: dict[str, dict[str, list[Run]]]) -> dict:
    out: dict = {}
    for name, by_load in runs.items():
        out[name] = {}
        for load, rs in by_load.items():
            out[name][load] = {
                "rps": spread([r.rps for r in rs]), "samples_per_s": spread([r.sps for r in rs]),
                "p50_ms": spread([r.p50_ms for r in rs]), "p99_ms": spread([r.p99_ms for r in rs]),
                "cpu_us": spread([r.cpu_us for r in rs]),
                "client_cores": spread([r.client_cores for r in rs]),
                "failed": sum(r.failed for r in rs), "requests": sum(r.requests for r in rs),
                "runs": [r.to_json() for r in rs]}
    return out


def ratio(runs: dict[str, dict[str, list[Run]]], name: str, other: str, load: str,
          attr: str = "rps") -> dict | None:
    """``name`` / ``other`` of the medians, and per repeat (a repeat's runs are back to back);
    None when either server is missing or ``other``'s median is 0."""
    if name not in runs or other not in runs or load not in runs[name]:
        return None
    a = [getattr(r, attr) for r in runs[name][load]]
    b = [getattr(r, attr) for r in runs[other][load]]
    if not statistics.median(b):
        return None
    result = spread([x / y for x, y in zip(a, b, strict=True) if y])
    result["of_medians"] = statistics.median(a) / statistics.median(b)
    return result


def profile_servers(servers: list[Server], wrk: Wrk, script: Path, seconds: int,
                    folder: Path, names: tuple[str, ...] = PROFILED) -> dict:
    """py-spy samples of the servers called ``names`` under the concurrency-64 load: server
    CPU per request, split by activity in proportion to the samples."""
    if py_spy() is None:
        console.print("py-spy not installed (pip install py-spy); no profile", style="yellow")
        return {}
    out = {}
    load = SMALL[-1]
    for s in servers:
        if s.name not in names:
            continue
        wait_idle(servers, console=console)
        raw = folder / f"profile-{s.name}.txt"
        started = wrk.start(s.url + PREDICT_PATH, script, load.connections, seconds + 2, s.pid)
        time.sleep(1)
        # The samples split the server process's CPU; its children (a request-log writer
        # process) are measured beside it, not sampled.
        threads0 = thread_cpu(s.pid)
        cpu0, t0 = cpu_seconds([s.pid], children=False), time.monotonic()
        ok = record(s.pid, seconds, raw)
        cpu, wall = cpu_seconds([s.pid], children=False) - cpu0, time.monotonic() - t0
        threads = {k: v - threads0.get(k, 0.0) for k, v in thread_cpu(s.pid).items()}
        run = wrk.finish(started, seconds + 2, 1)
        if not ok:
            console.print(f"py-spy failed on {s.name}", style="yellow")
            continue
        breakdown = profile_breakdown(raw.read_text())
        requests = run.rps * wall
        per_request = 1e6 * cpu / requests if requests else 0.0
        out[s.name] = {**breakdown, "rps": run.rps, "cpu_us": per_request,
                       "us": {k: v * per_request for k, v in breakdown["categories"].items()},
                       "thread_us": {k: 1e6 * v / requests for k, v in threads.items()
                                     if requests and v > 0}}
    return out


# ------------------------------------------------------------------------------ version swap


class StatusPoller(threading.Thread):
    """Polls the model status; records when version ``new`` is AVAILABLE and ``old`` gone."""

    def __init__(self, url: str, old: int, new: int, interval_s: float = 0.05):
        super().__init__(daemon=True, name="status-poller")
        self.url, self.interval_s = url, interval_s
        self.old, self.new = old, new
        self.v2_available: float | None = None
        self.v1_end: float | None = None
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval_s):
            status, body = http("GET", self.url, timeout=2.0)
            if status != 200:
                continue
            now = time.monotonic()
            states = {int(v["version"]): v["state"]
                      for v in json.loads(body)["model_version_status"]}
            if self.v2_available is None and states.get(self.new) == "AVAILABLE":
                self.v2_available = now
            if self.v2_available is not None and self.v1_end is None \
                    and states.get(self.old, "END") == "END":
                self.v1_end = now

    def stop(self) -> None:
        self._done.set()
        self.join(5)


def swap_tests(server: Server, wrk: Wrk, script: Path, version_2: Path,
               args: argparse.Namespace) -> dict:
    """``--swaps`` swaps one after another (versions 2, 3, ...: copies of ``version_2``); the
    figures are the median swap's, with the min-max over swaps."""
    swaps = []
    for i in range(args.swaps):
        swaps.append(swap_test(server, wrk, script, version_2, args, new=2 + i))
        console.print(f"  {server.name} swap {i + 1}/{args.swaps}: p99 "
                      f"{swaps[-1]['swap_p99_ms']:.1f} ms vs steady "
                      f"{swaps[-1]['steady_p99_ms']:.1f} ms ({swaps[-1]['p99_ratio']:.2f}x), "
                      f"failed {swaps[-1]['failed']}", style="dim", highlight=False)
    median = sorted(swaps, key=lambda w: w["p99_ratio"])[(len(swaps) - 1) // 2]
    return {**median, "p99_ratio_spread": spread([w["p99_ratio"] for w in swaps]),
            "swaps": swaps, "completed": all(w["completed"] for w in swaps),
            "failed": sum(w["failed"] for w in swaps),
            "requests": sum(w["requests"] for w in swaps)}


def swap_test(server: Server, wrk: Wrk, script: Path, version_2: Path, args: argparse.Namespace,
              *, new: int = 2) -> dict:
    """Back-to-back 1 s windows of the c=64 load; version ``new`` is published during one of
    them, replacing ``new - 1``."""
    base = Path(server.command[server.command.index("--model_base_path") + 1])
    staging = base / STAGING
    shutil.copytree(version_2, staging)  # staged before the load: the publish is one rename
    load = SMALL[-1]
    url = server.url + PREDICT_PATH
    wait_idle([server], console=console)
    poller = StatusPoller(server.url + STATUS_PATH, old=new - 1, new=new)
    poller.start()
    windows: list[Run] = []
    try:
        for _ in range(args.swap_steady):
            windows.append(wrk.run(url, script, load, 1))
        started = wrk.start(url, script, load.connections, 1)
        time.sleep(0.3)
        published = time.monotonic()
        os.rename(staging, base / str(new))
        windows.append(wrk.finish(started, 1, load.instances))
        while poller.v1_end is None and time.monotonic() - published < args.swap_timeout:
            windows.append(wrk.run(url, script, load, 1))
        for _ in range(2):
            windows.append(wrk.run(url, script, load, 1))
    finally:
        poller.stop()
    end = poller.v1_end
    steady = args.swap_steady
    during = [w for w in windows[steady:] if end is None or w.started <= end]
    steady_p99 = statistics.median(w.p99_ms for w in windows[:steady])
    swap_p99 = max(w.p99_ms for w in during)
    return {"completed": end is not None, "version": new,
            "v2_available_after_s": None if poller.v2_available is None
            else poller.v2_available - published,
            "v1_end_after_s": None if end is None else end - published,
            "steady_p99_ms": steady_p99, "swap_p99_ms": swap_p99,
            "p99_ratio": swap_p99 / steady_p99 if steady_p99 else float("inf"),
            "failed": sum(w.failed for w in windows), "requests": sum(w.requests for w in windows),
            "windows": [{**w.to_json(), "t": w.started - published} for w in windows]}


# ------------------------------------------------------------------------------ report


def _rate(s: dict) -> str:
    return f"{s['median']:,.0f} ({s['min']:,.0f}-{s['max']:,.0f})"


def _ms(s: dict) -> str:
    digits = 2 if s["median"] < 10 else 1
    return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f}-{s['max']:,.{digits}f})"


def _x(r: dict | None) -> str:
    return "n/a" if r is None else f"{r['of_medians']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"


def tables(results: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every results table: printed, and written as Markdown."""
    out = []
    for payload, group in results["payloads"].items():
        summary, runs = group["summary"], group["runs_obj"]
        loads = list(next(iter(summary.values())))
        header = ["server", "c=1 p50 ms", "c=1 / no-op", "c=16 req/s", "c=16 / no-op",
                  "c=64 req/s", "c=64 / no-op", "c=64 p99 ms", "CPU us/req", "CPU / no-op",
                  "wrk cores"]
        rows = []
        for name, by_load in summary.items():
            c64 = by_load["c64"]
            cpu = ratio(runs, name, "noop", "c64", "cpu_us")
            rows.append([SERVER_LABELS[name], _ms(by_load["c1"]["p50_ms"]),
                         _x(ratio(runs, name, "noop", "c1")), _rate(by_load["c16"]["rps"]),
                         _x(ratio(runs, name, "noop", "c16")), _rate(c64["rps"]),
                         _x(ratio(runs, name, "noop", "c64")), _ms(c64["p99_ms"]),
                         f"{c64['cpu_us']['median']:,.0f}", _x(cpu),
                         f"{c64['client_cores']['median']:.2f}"])
        out.append((f"{payload:,} numbers per instance ({PAYLOADS[payload]}x{PAYLOADS[payload]} "
                    "pixels), 1 instance per request (CPU and wrk: at c=64)", header, rows))
        if "large" in loads:
            header = ["server", "samples/s", "/ no-op", "/ before", "p50 ms", "p99 ms",
                      "CPU us/req", "wrk cores"]
            rows = [[SERVER_LABELS[name], _rate(by["large"]["samples_per_s"]),
                     _x(ratio(runs, name, "noop", "large", "sps")),
                     _x(ratio(runs, name, "before", "large", "sps")),
                     _ms(by["large"]["p50_ms"]), _ms(by["large"]["p99_ms"]),
                     f"{by['large']['cpu_us']['median']:,.0f}",
                     f"{by['large']['client_cores']['median']:.2f}"]
                    for name, by in summary.items()]
            out.append((f"{payload:,} numbers per instance, 64 instances per request, "
                        "concurrency 8", header, rows))
        failed = sum(v["failed"] for by in summary.values() for v in by.values())
        total = sum(v["requests"] for by in summary.values() for v in by.values())
        group["failed"], group["requests"] = failed, total
    header = ["payload", "TF batch 1 us", "TF batch 64 /s", "LiteRT batch 1 us",
              "LiteRT batch 64 /s"]
    rows = [[f"{p:,}", f"{g['in_process']['tensorflow']['batch1_us']:,.0f}",
             f"{g['in_process']['tensorflow']['batch64_sps']:,.0f}",
             f"{g['in_process']['litert']['batch1_us']:,.1f}",
             f"{g['in_process']['litert']['batch64_sps']:,.0f}"]
            for p, g in results["payloads"].items()]
    out.append(("the model in-process (the exported signature; LiteRT: the same, converted, 2 "
                "threads)", header, rows))
    prof = results.get("profile") or {}
    if prof:
        names = [n for n in PROFILED if n in prof]
        kinds = sorted({k for p in prof.values() for k in p["us"]},
                       key=lambda k: -max(p["us"].get(k, 0) for p in prof.values()))
        header = ["server CPU per request, us", *[SERVER_LABELS[n].replace(
            "tfprod serve ", "") for n in names]]
        rows = [[k, *[f"{prof[n]['us'].get(k, 0):,.0f}" for n in names]] for k in kinds]
        rows.append(["total (measured)", *[f"{prof[n]['cpu_us']:,.0f}" for n in names]])
        rows.append(["req/s while sampled", *[f"{prof[n]['rps']:,.0f}" for n in names]])
        out.append(("where the server's CPU goes: 64 numbers per instance, concurrency 64, "
                    "py-spy samples (shares) x CPU per request", header, rows))
    return out


def _get(results: dict, payload: int, name: str, load: str, key: str) -> float | None:
    try:
        return results["payloads"][payload]["summary"][name][load][key]["median"]
    except KeyError:
        return None


def _ratio(results: dict, payload: int, name: str, other: str, load: str,
           attr: str = "rps") -> float | None:
    group = results["payloads"].get(payload)
    if group is None:
        return None
    r = ratio(group["runs_obj"], name, other, load, attr)
    return None if r is None else r["of_medians"]


def targets(results: dict) -> list[dict]:
    """Issue 10's targets; ``pass`` None where a figure was not measured."""
    rows = []

    def add(figure: str, value: float | None, wanted: str, ok: bool | None) -> None:
        rows.append({"figure": figure, "value": value, "target": wanted,
                     "pass": None if value is None else ok})

    small = _ratio(results, 64, "batching", "noop", "c64")
    add("64 numbers, c=64: batching req/s / no-op", small, ">= 0.8 (moonshot 1.0)",
        small is not None and small >= 0.8)
    p99 = _get(results, 64, "batching", "c64", "p99_ms")
    add("64 numbers, c=64: batching p99 ms", p99, "<= 25", p99 is not None and p99 <= 25)
    for payload in results["payloads"]:
        for name in ("batching", "batching-litert"):
            if (payload, name) == (64, "batching"):
                continue  # the first row
            r = _ratio(results, payload, name, "noop", "c64")
            add(f"{payload:,} numbers, c=64: {name} req/s / no-op", r, ">= 0.8",
                r is not None and r >= 0.8)
    for name, bound in (("batching-litert", 0.6), ("litert", 0.6), ("batching", 1.0),
                        ("tfprod", 1.0)):
        p50 = _get(results, 64, name, "c1", "p50_ms")
        add(f"64 numbers, c=1: {name} p50 ms", p50, f"<= {bound}",
            p50 is not None and p50 <= bound)
    for on, off in (("batching", "tfprod"), ("batching-litert", "litert")):
        r = _ratio(results, 64, on, off, "c1", "p50_ms")
        add(f"64 numbers, c=1: p50 {on} / {off}", r, "<= 1.10", r is not None and r <= 1.10)
    large = _ratio(results, 64, "batching-litert", "noop", "large", "sps")
    add("64 x 64 numbers, c=8: batching-litert samples/s / no-op", large, ">= 0.9",
        large is not None and large >= 0.9)
    for payload in results["payloads"]:
        r = _ratio(results, payload, "batching", "before", "large", "sps")
        if r is not None:
            add(f"64 x {payload:,} numbers, c=8: batching samples/s / before", r, ">= 0.95",
                r >= 0.95)
    cpu = _ratio(results, 64, "batching", "noop", "c64", "cpu_us")
    add("64 numbers, c=64: batching CPU per request / no-op", cpu, "<= 1.3",
        cpu is not None and cpu <= 1.3)
    for other, bound in (("fastapi", 4.0), ("flask", 100.0)):  # the first serving targets
        for payload in results["payloads"]:
            r = _ratio(results, payload, "batching", other, "c64")
            if r is not None:
                add(f"{payload:,} numbers, c=64: batching req/s / {other}", r, f">= {bound:g}",
                    r >= bound)
    for name, swap in (results.get("swaps") or {}).items():
        done = swap["completed"]
        add(f"swap under load ({name}): failed requests", swap["failed"], "0",
            done and swap["failed"] == 0)
        add(f"swap under load ({name}): p99 / steady p99", swap["p99_ratio"], "<= 2",
            done and swap["p99_ratio"] <= 2)
    return rows


def print_report(results: dict) -> None:
    for title, header, rows in tables(results):
        table = Table(title=title, title_justify="left")
        for h in header:
            table.add_column(h)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    for name, swap in (results.get("swaps") or {}).items():
        fmt = lambda v: "never" if v is None else f"{v:.2f} s"  # noqa: E731
        r = swap["p99_ratio_spread"]
        console.print(f"swaps on {name}: version {swap['version']} AVAILABLE after "
                      f"{fmt(swap['v2_available_after_s'])}, previous END after "
                      f"{fmt(swap['v1_end_after_s'])}; p99 steady {swap['steady_p99_ms']:.1f} "
                      f"ms, swap {swap['swap_p99_ms']:.1f} ms ({swap['p99_ratio']:.2f}x; "
                      f"{r['min']:.2f}-{r['max']:.2f}x over swaps); failed {swap['failed']} of "
                      f"{swap['requests']:,}", highlight=False)
    table = Table(title="targets (issue 10)", title_justify="left")
    for c in ("figure", "value", "target", "verdict"):
        table.add_column(c)
    verdicts = {True: "[green]PASS[/]", False: "[red]FAIL[/]", None: "n/a"}
    for row in results["targets"]:
        value = "n/a" if row["value"] is None else f"{row['value']:,.2f}"
        table.add_row(row["figure"], value, row["target"], verdicts[row["pass"]])
    console.print(table)


def markdown(results: dict) -> str:
    lines = []
    for title, header, rows in tables(results):
        lines += [f"{title}:", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    lines += ["| target | wanted | measured | result |", "|---|---|---|---|"]
    for row in results["targets"]:
        value = "n/a" if row["value"] is None else f"{row['value']:,.2f}"
        verdict = {True: "PASS", False: "not met", None: "n/a"}[row["pass"]]
        lines.append(f"| {row['figure']} | {row['target']} | {value} | {verdict} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ main


#: Run lengths of a full run and of ``--quick``; a flag given explicitly wins.
FULL = {"duration": 3, "repeats": 3, "warmup": 2, "swap_steady": 4, "swaps": 3,
        "profile_seconds": 5, "epochs": 2}
QUICK = {"duration": 1, "repeats": 1, "warmup": 1, "swap_steady": 2, "swaps": 1,
         "profile_seconds": 0, "epochs": 1}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: " + ", ".join(
        f"{k} {v}" for k, v in QUICK.items()))
    parser.add_argument("--duration", type=int, help=f"seconds per wrk run ({FULL['duration']})")
    parser.add_argument("--repeats", type=int, help=f"runs per server and load ({FULL['repeats']})")
    parser.add_argument("--warmup", type=int, help="seconds of warm-up per server "
                        f"({FULL['warmup']}; 0: none)")
    parser.add_argument("--payloads", default=",".join(str(p) for p in PAYLOADS),
                        help="numbers per instance, some of " + ", ".join(map(str, PAYLOADS)))
    parser.add_argument("--large-payloads", default="64,1024",
                        help="payloads also measured with 64 instances per request at c=8")
    parser.add_argument("--servers", default=",".join(DEFAULT_SERVERS),
                        help="comma-separated subset of: " + ", ".join(SERVER_LABELS))
    parser.add_argument("--before", default=None, help="git revision whose tfprod serve is "
                        "measured as 'before' (e.g. the commit this branch started from)")
    parser.add_argument("--swap-steady", type=int,
                        help=f"1 s windows before the publish ({FULL['swap_steady']})")
    parser.add_argument("--swaps", type=int, help=f"version swaps per batching server "
                        f"({FULL['swaps']}; 0: none)")
    parser.add_argument("--swap-timeout", type=float, default=60.0,
                        help="seconds to wait for a swap to finish")
    parser.add_argument("--profile-seconds", type=int, help="py-spy sampling per profiled "
                        f"server ({FULL['profile_seconds']}; 0: none)")
    parser.add_argument("--epochs", type=int, help=f"training epochs ({FULL['epochs']})")
    parser.add_argument("--wrk-timeout", type=float, default=30.0,
                        help="seconds before wrk counts a request as timed out")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-timeout-micros", type=int, default=5000)
    parser.add_argument("--num-batch-threads", type=int, default=1)
    parser.add_argument("--max-enqueued-batches", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", type=Path, default=None,
                        help="write the tables and targets as Markdown here")
    add_machine_args(parser)
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.duration < 1 or args.repeats < 1 or args.swap_steady < 1 or args.swaps < 0:
        parser.error("--duration, --repeats and --swap-steady must be >= 1, --swaps >= 0")
    try:
        args.payloads = [int(p) for p in args.payloads.split(",") if p]
        args.large_payloads = [int(p) for p in args.large_payloads.split(",") if p]
    except ValueError:
        parser.error("--payloads / --large-payloads: comma-separated numbers")
    if not set(args.payloads + args.large_payloads) <= set(PAYLOADS):
        parser.error(f"--payloads: expected some of {list(PAYLOADS)}")
    names = [n for n in args.servers.split(",") if n]
    unknown = sorted(set(names) - set(SERVER_LABELS))
    if unknown:
        parser.error(f"--servers: unknown {unknown}; expected some of {list(SERVER_LABELS)}")
    if "noop" not in names:
        parser.error("--servers must include noop: every figure is a multiple of it")
    args.servers = [n for n in SERVER_LABELS if n in names]
    return args


def run_payload(payload: int, args: argparse.Namespace, tmp: Path, wrk: Wrk,
                before_src: Path | None, results: dict) -> None:
    side = PAYLOADS[payload]
    folder = tmp / f"payload-{payload}"
    folder.mkdir()
    console.print(f"{payload:,} numbers per instance: training and exporting the digits CNN "
                  f"({side}x{side})", style="bold")
    model = train_and_export(folder, side, args.epochs, args.seed,
                             version_2=payload == 64 and args.swaps > 0)
    bodies = write_bodies(folder, model["x_test"])
    scripts = {n: write_lua(p) for n, p in bodies.items()}
    batching_file = folder / "batching.config"
    batching_file.write_text(batching_text(args))
    group: dict = {"model": {k: model[k] for k in ("params", "accuracy", "train_seconds")},
                   "in_process": in_process(model["version_1"], model["x_test"],
                                            1.0 if args.quick else 3.0)}
    results["payloads"][payload] = group
    servers = make_servers(args.servers, folder, model, batching_file, before_src)
    loads = [*SMALL, *([LARGE] if payload in args.large_payloads else [])]
    try:
        for s in servers:
            s.start()
        group["ready_seconds"] = {s.name: s.wait_ready(READY_TIMEOUT_S) for s in servers}
        check_answers(servers, bodies, model["expected"])
        if args.max_load is not None:
            wait_for_load(args.max_load, args.max_wait, console)
        group["load_average_start"] = list(os.getloadavg())
        runs = measure(servers, wrk, scripts, loads, args, payload)
        group["summary"], group["runs_obj"] = summarize(runs), runs
        group["load_average_end"] = list(os.getloadavg())
        if payload == 64 and args.profile_seconds:
            console.print("profiling (py-spy)", style="bold")
            results["profile"] = profile_servers(servers, wrk, scripts[1], args.profile_seconds,
                                                 folder)
        if payload == 64 and args.swaps:
            for s in servers:
                if s.name in ("batching", "batching-litert"):
                    console.print(f"version swaps under load: {s.name}", style="bold")
                    wait_idle(servers, console=console)
                    results.setdefault("swaps", {})[s.name] = swap_tests(
                        s, wrk, scripts[1], model["version_2"], args)
    finally:
        for s in servers:
            s.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C (even when started with SIGINT ignored, e.g. in the background) and SIGTERM unwind
    # through the finally that stops the servers.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runtime.configure(verbose=False)
    info = machine_info()
    wrk = Wrk(1, args.wrk_timeout)
    results: dict = {"batching_parameters": batching_text(args), "payloads": {}}
    with tempfile.TemporaryDirectory(prefix="tfprod-serving-") as tmp_name:
        tmp = Path(tmp_name)
        before_src = None
        if args.before and "before" in args.servers:
            before_src, results["before_commit"] = unpack_before(args.before, tmp)
        try:
            for payload in args.payloads:
                run_payload(payload, args, tmp, wrk, before_src, results)
        except KeyboardInterrupt:
            console.print("interrupted; every server stopped", style="yellow")
            return 130
    info["load_average_end"] = list(os.getloadavg())
    results["targets"] = targets(results)
    console.print(f"batching parameters: {batching_text(args).strip()}".replace("\n", "; "),
                  highlight=False)
    print_report(results)
    console.print(f"machine: {info}", style="dim")
    if args.markdown is not None:
        args.markdown.write_text(markdown(results))
        console.print(f"wrote {args.markdown}")
    if args.json is not None:
        for group in results["payloads"].values():
            group.pop("runs_obj", None)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "args": {
            k: v for k, v in vars(args).items() if k not in ("json", "markdown")}, **results},
            indent=2, default=str))
        console.print(f"wrote {args.json}")
    return 0 if all(r["pass"] is not False for r in results["targets"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
