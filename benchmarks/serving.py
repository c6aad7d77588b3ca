"""``tfprod serve`` under load, side by side with the usual ways of serving a Keras model.

Trains the quickstart digits CNN (``small_cnn((32, 32, 1), 10)`` on ``load_digits(32)``) for
``--epochs`` epochs, exports it in TF Serving's layout (``BASE/1/``) and saves it as ``.keras``,
then starts, each as its own process on a free 127.0.0.1 port:

- ``noop``: FastAPI parsing the JSON body into an array and returning a constant: the HTTP + JSON
  ceiling of the machine (``serving_baselines/fastapi_noop.py``);
- ``fastapi``: FastAPI calling a ``tf.function`` of the model per request
  (``serving_baselines/fastapi_function.py``);
- ``flask``: naive Flask calling ``model.predict`` per request
  (``serving_baselines/flask_predict.py``);
- ``tfprod-batching``: ``tfprod serve --enable_batching``; batching parameters from the flags
  (default: max_batch_size 64, batch_timeout_micros 5000, num_batch_threads 1,
  max_enqueued_batches 32; on 2 shared cores a 5 ms timeout gave ~15% more small requests/s
  than 1-2 ms: fuller batches leave more CPU to the event loop that parses the JSON);
- ``tfprod``: ``tfprod serve`` without batching.

Every server answers TF Serving's ``POST /v1/models/digits:predict`` with row bodies
(``{"instances": [...]}``, uint8 pixel values as JSON numbers). ``wrk`` (a second process) drives
two loads: small requests (1 instance each) at concurrency 64 and large requests (64 instances
each) at concurrency 8, ``--duration`` seconds per run, ``--repeats`` runs interleaved across
servers (drift hits all alike); medians and min-max are reported, and every server as a multiple
of the ceiling, of FastAPI and of Flask. The model in-process (the exported signature at batch
64, no HTTP) gives the inference ceiling.

Then the version swaps (``--swaps``, one after another; the median swap is reported, with the
min-max over swaps): back-to-back 1-second wrk windows of the small load against
``tfprod-batching`` (polling the file system every second); during one window version 2 (the
model trained one more epoch, staged in a hidden folder of the base path) is renamed to
``BASE/2``. The swap window runs from the rename until version 1 has reached END; its p99 (the
worst window's) is compared with the steady windows' median p99, and failed requests (non-2xx,
socket errors, timeouts) are counted over all windows.

Latencies are wrk's (from sending a request to its response); requests still in flight when a
run ends are not counted, which flatters the p99 of servers slower than the run (Flask). Before
every run the benchmark waits until all servers are idle (under 0.05 cores for 0.25 s): a server
slower than its load keeps working through the requests queued before its run ended, and that
CPU would otherwise be taken from the next server measured.

With ``--profile-seconds`` (and py-spy installed) the batching server is sampled under each load
and its CPU shown by thread, by tfprod function and by leaf function.

Targets (issue 6): batching, small requests: >= 0.5x the ceiling's req/s and p99 <= 50 ms; large
requests: >= 0.75x the ceiling's samples/s; swap: 0 failed, p99 <= 2x steady.

Usage::

    .venv/bin/python benchmarks/serving.py --json /tmp/serving.json
    .venv/bin/python benchmarks/serving.py --quick          # smoke run, ~2 minutes

Run it on an idle machine (``--max-load 0.8`` waits for one): client and server share the CPU.
Every server is stopped by PID at the end, on errors and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from machine import add_machine_args, machine_info, wait_for_load
from tfprod import runtime

console = Console(width=160)

HERE = Path(__file__).resolve().parent
BASELINES = HERE / "serving_baselines"
MODEL_NAME = "digits"
PREDICT_PATH = f"/v1/models/{MODEL_NAME}:predict"
STATUS_PATH = f"/v1/models/{MODEL_NAME}"
#: Hidden staging folder of the swap (the servers only look at numbered folders).
STAGING = ".tmp-export-benchmark"
READY_TIMEOUT_S = 180.0
STOP_GRACE_S = 15.0

SERVER_LABELS = {
    "noop": "FastAPI no-op (ceiling)",
    "fastapi": "FastAPI + tf.function",
    "flask": "Flask + model.predict",
    "tfprod-batching": "tfprod serve --enable_batching",
    "tfprod": "tfprod serve",
}


@dataclass(frozen=True)
class Load:
    """One request shape at one concurrency."""

    name: str
    instances: int
    connections: int


LOADS = (Load("small", 1, 64), Load("large", 64, 8))

_LUA = """\
local f = assert(io.open({body}, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"duration_us": %.0f, "requests": %.0f, "connect": %.0f, "read": %.0f, ' ..
    '"write": %.0f, "status": %.0f, "timeout": %.0f, "p50_us": %.0f, "p90_us": %.0f, ' ..
    '"p99_us": %.0f, "max_us": %.0f, "mean_us": %.1f}}\\n',
    summary.duration, summary.requests, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
"""


# ------------------------------------------------------------------------------ wrk


@dataclass
class Run:
    """One wrk run: completed requests, failures and latency percentiles (ms)."""

    seconds: float
    requests: int
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    instances: int
    started: float = 0.0  # time.monotonic() when wrk started
    ended: float = 0.0
    idle_wait_s: float = 0.0  # waited before the run for the servers to go idle

    @property
    def failed(self) -> int:
        return self.non_2xx + self.socket_errors

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def sps(self) -> float:
        return self.rps * self.instances

    def to_json(self) -> dict:
        return {**asdict(self), "rps": self.rps, "samples_per_s": self.sps}


def write_lua(body_path: Path) -> Path:
    """A wrk script POSTing ``body_path`` and printing the summary as one JSON line."""
    script = body_path.with_suffix(".lua")
    script.write_text(_LUA.format(body=json.dumps(str(body_path))))
    return script


class Wrk:
    """Runs wrk (in the background or to the end) and parses its summary."""

    def __init__(self, threads: int, timeout_s: float):
        self.exe = shutil.which("wrk")
        if self.exe is None:
            raise SystemExit("wrk not found; install it (apt-get install wrk)")
        self.threads = threads
        self.timeout_s = timeout_s

    def start(self, url: str, script: Path, connections: int, seconds: int
              ) -> tuple[subprocess.Popen, float]:
        command = [self.exe, "-t", str(min(self.threads, connections)), "-c", str(connections),
                   "-d", f"{seconds}s", "--timeout", f"{self.timeout_s:g}s", "-s", str(script),
                   url]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True)
        return proc, time.monotonic()

    def finish(self, started: tuple[subprocess.Popen, float], seconds: int, instances: int
               ) -> Run:
        proc, t0 = started
        try:
            out, err = proc.communicate(timeout=seconds + self.timeout_s + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RuntimeError("wrk did not finish in time") from None
        match = re.search(r"^WRKJSON (.*)$", out, re.MULTILINE)
        if proc.returncode != 0 or match is None:
            raise RuntimeError(f"wrk failed (exit {proc.returncode}): {err.strip() or out}")
        s = json.loads(match.group(1))
        return Run(seconds=s["duration_us"] / 1e6, requests=int(s["requests"]),
                   non_2xx=int(s["status"]),
                   socket_errors=int(s["connect"] + s["read"] + s["write"] + s["timeout"]),
                   p50_ms=s["p50_us"] / 1e3, p90_ms=s["p90_us"] / 1e3, p99_ms=s["p99_us"] / 1e3,
                   max_ms=s["max_us"] / 1e3, mean_ms=s["mean_us"] / 1e3, instances=instances,
                   started=t0, ended=time.monotonic())

    def run(self, url: str, script: Path, load: Load, seconds: int) -> Run:
        return self.finish(self.start(url, script, load.connections, seconds), seconds,
                           load.instances)


# ------------------------------------------------------------------------------ servers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, timeout: float = 10.0
         ) -> tuple[int, bytes]:
    """(status, body) of one request; status 0 when the server does not answer."""
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


@dataclass
class Server:
    """One server process on 127.0.0.1, its log in a file, stopped by PID."""

    name: str
    command: list[str]
    port: int
    ready_path: str
    log_path: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)
    started: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "wb") as log:
            # A session of its own: Ctrl-C reaches only the benchmark, which stops it by PID.
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)
        self.started = time.monotonic()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds from start until the readiness path answers 200 (at most ``timeout_s``);
        raises if the process dies first."""
        while time.monotonic() - self.started < timeout_s:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited before it was ready:\n{self.log_tail()}")
            if http("GET", self.url + self.ready_path, timeout=2.0)[0] == 200:
                return time.monotonic() - self.started
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} is not running:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM to its PID, SIGKILL after a grace period."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def baseline(name: str, script: str, port: int, tmp: Path, model_args: list[str]) -> Server:
    command = [sys.executable, str(BASELINES / script), "--port", str(port), "--model_name",
               MODEL_NAME, *model_args]
    return Server(name, command, port, "/ready", tmp / f"{name}.log")


def tfprod_server(name: str, base: Path, tmp: Path, batching_file: Path | None) -> Server:
    exe = Path(sys.executable).parent / "tfprod"
    if not exe.exists():
        raise SystemExit(f"{exe} not found; install the project (pip install -e .)")
    port = free_port()
    command = [str(exe), "serve", "--port", str(free_port()), "--rest_api_port", str(port),
               "--rest_api_host", "127.0.0.1", "--grpc_host", "127.0.0.1", "--model_name",
               MODEL_NAME, "--model_base_path", str(base), "--file_system_poll_wait_seconds",
               "1"]
    if batching_file is not None:
        command += ["--enable_batching", "--batching_parameters_file", str(batching_file)]
    return Server(name, command, port, "/v1/ready", tmp / f"{name}.log")


def start_all(servers: list[Server]) -> dict[str, float]:
    """Starts every server, then waits for each (bounded); seconds to ready by name."""
    for s in servers:
        s.start()
    return {s.name: s.wait_ready(READY_TIMEOUT_S) for s in servers}


def check_answers(servers: list[Server], bodies: dict[str, bytes], expected: np.ndarray) -> None:
    """Each server answers both bodies with 200 and one row of 10 scores per instance; the
    model servers' classes equal the in-process model's."""
    for s in servers:
        for load in LOADS:
            status, body = http("POST", s.url + PREDICT_PATH, bodies[load.name], timeout=60)
            if status != 200:
                raise RuntimeError(f"{s.name}: {load.name} request -> {status} {body[:300]!r}")
            scores = np.asarray(json.loads(body)["predictions"])
            if scores.shape != (load.instances, 10):
                raise RuntimeError(f"{s.name}: predictions of shape {scores.shape}; expected "
                                   f"({load.instances}, 10)")
            if s.name != "noop" and not np.array_equal(scores.argmax(-1),
                                                       expected[:load.instances]):
                raise RuntimeError(f"{s.name}: classes differ from the in-process model's")


# ------------------------------------------------------------------------------ model


def train_and_export(tmp: Path, epochs: int, seed: int) -> dict:
    """Trains the digits CNN; writes ``model.keras``, ``base/1`` and ``next/2`` (one more
    epoch). Returns the paths, the test images and the model's classes for them."""
    import keras

    from tfprod.data.sample import load_digits
    from tfprod.export import export_saved_model
    from tfprod.models import small_cnn

    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = load_digits(32)
    model = small_cnn((32, 32, 1), 10)
    t0 = time.perf_counter()
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0)
    train_s = time.perf_counter() - t0
    accuracy = float(model.evaluate(x_test, y_test, verbose=0)[1])
    model.save(tmp / "model.keras")
    v1 = export_saved_model(model, tmp / "base", version=1, reference_data=x_train[:256])
    expected = model.predict(x_test[:64], verbose=0).argmax(-1)
    model.fit(x_train, y_train, batch_size=32, epochs=1, verbose=0)
    export_saved_model(model, tmp / "next", version=2, reference_data=x_train[:256])
    return {"keras": tmp / "model.keras", "version_1": Path(v1.path),
            "version_2": tmp / "next" / "2", "x_test": x_test, "expected": expected,
            "accuracy": accuracy, "train_seconds": train_s, "params": model.count_params()}


def write_bodies(tmp: Path, x: np.ndarray) -> dict[str, Path]:
    """The request bodies (TF Serving row format, pixel values as JSON integers)."""
    paths = {}
    for load in LOADS:
        path = tmp / f"{load.name}.json"
        path.write_text(json.dumps({"instances": x[:load.instances].tolist()},
                                   separators=(",", ":")))
        paths[load.name] = path
    return paths


def in_process(version_dir: Path, x: np.ndarray, seconds: float, repeats: int) -> list[float]:
    """Samples/s of the exported ``serving_default`` signature called in-process at batch 64."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    batch = tf.constant(x[:64].astype(np.float32))
    for _ in range(10):
        fn(image=batch)
    rates = []
    for _ in range(repeats):
        calls, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            fn(image=batch)
            calls += 1
        rates.append(calls * len(batch) / elapsed)
    return rates


def batching_text(args: argparse.Namespace) -> str:
    return (f"max_batch_size {{ value: {args.max_batch_size} }}\n"
            f"batch_timeout_micros {{ value: {args.batch_timeout_micros} }}\n"
            f"num_batch_threads {{ value: {args.num_batch_threads} }}\n"
            f"max_enqueued_batches {{ value: {args.max_enqueued_batches} }}\n")


# ------------------------------------------------------------------------------ measurements


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (all their threads)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / tick


def wait_idle(servers: list[Server], *, window_s: float = 0.25, max_cores: float = 0.05,
              timeout_s: float = 30.0) -> float:
    """Waits until the servers together use under ``max_cores`` over ``window_s``: a server
    slower than the load (Flask) is still working through requests queued before its wrk run
    ended, and that CPU would be taken from the next server measured. Returns seconds waited."""
    pids = [s.proc.pid for s in servers if s.proc is not None]
    start = time.monotonic()
    used = cpu_seconds(pids)
    while time.monotonic() - start < timeout_s:
        time.sleep(window_s)
        now = cpu_seconds(pids)
        if now - used < max_cores * window_s:
            return time.monotonic() - start
        used = now
    console.print(f"  [yellow]servers still busy after {timeout_s:.0f} s; measuring anyway[/]")
    return time.monotonic() - start


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "values": values}


def measure(servers: list[Server], wrk: Wrk, scripts: dict[str, Path], args: argparse.Namespace
            ) -> dict[str, dict[str, list[Run]]]:
    """``--repeats`` wrk runs of each load on each server, interleaved; a warm-up run first."""
    runs: dict[str, dict[str, list[Run]]] = {s.name: {ld.name: [] for ld in LOADS}
                                             for s in servers}
    for repeat in range(args.repeats):
        for load in LOADS:
            for s in servers:
                s.check_alive()
                url = s.url + PREDICT_PATH
                if repeat == 0 and args.warmup:
                    wait_idle(servers)
                    wrk.run(url, scripts[load.name], load, args.warmup)
                waited = wait_idle(servers)
                run = wrk.run(url, scripts[load.name], load, args.duration)
                run.idle_wait_s = waited
                runs[s.name][load.name].append(run)
                console.print(f"  repeat {repeat + 1}/{args.repeats} {load.name:5} {s.name:15} "
                              f"{run.rps:9,.0f} req/s {run.sps:9,.0f} samples/s  p50 "
                              f"{run.p50_ms:8.1f} ms  p99 {run.p99_ms:8.1f} ms  failed "
                              f"{run.failed}", style="dim", highlight=False)
    return runs


def summarize(runs: dict[str, dict[str, list[Run]]]) -> dict:
    out: dict = {}
    for name, by_load in runs.items():
        out[name] = {}
        for load, rs in by_load.items():
            out[name][load] = {
                "rps": spread([r.rps for r in rs]), "samples_per_s": spread([r.sps for r in rs]),
                "p50_ms": spread([r.p50_ms for r in rs]), "p99_ms": spread([r.p99_ms for r in rs]),
                "failed": sum(r.failed for r in rs), "non_2xx": sum(r.non_2xx for r in rs),
                "socket_errors": sum(r.socket_errors for r in rs),
                "requests": sum(r.requests for r in rs), "runs": [r.to_json() for r in rs]}
    return out


def ratio(runs: dict[str, dict[str, list[Run]]], name: str, other: str, load: str,
          attr: str = "rps") -> dict | None:
    """``name`` / ``other`` of the medians, and per repeat (a repeat's runs are back to back);
    None when either server is missing or ``other`` completed no request."""
    if name not in runs or other not in runs:
        return None
    a = [getattr(r, attr) for r in runs[name][load]]
    b = [getattr(r, attr) for r in runs[other][load]]
    if not statistics.median(b):
        return None
    result = spread([x / y for x, y in zip(a, b, strict=True) if y])
    result["of_medians"] = statistics.median(a) / statistics.median(b)
    return result


# ------------------------------------------------------------------------------ version swap


class StatusPoller(threading.Thread):
    """Polls the model status; records when version ``new`` is AVAILABLE and ``old`` gone."""

    def __init__(self, url: str, old: int, new: int, interval_s: float = 0.05):
        super().__init__(daemon=True, name="status-poller")
        self.url, self.interval_s = url, interval_s
        self.old, self.new = old, new
        self.v2_available: float | None = None
        self.v1_end: float | None = None
        self.states: list[tuple[float, dict[int, str]]] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval_s):
            status, body = http("GET", self.url, timeout=2.0)
            if status != 200:
                continue
            now = time.monotonic()
            states = {int(v["version"]): v["state"]
                      for v in json.loads(body)["model_version_status"]}
            if not self.states or self.states[-1][1] != states:
                self.states.append((now, states))
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
        console.print(f"  swap {i + 1}/{args.swaps}: p99 {swaps[-1]['swap_p99_ms']:.1f} ms vs "
                      f"steady {swaps[-1]['steady_p99_ms']:.1f} ms "
                      f"({swaps[-1]['p99_ratio']:.2f}x), failed {swaps[-1]['failed']}",
                      style="dim", highlight=False)
    ratios = [w["p99_ratio"] for w in swaps]
    median = sorted(swaps, key=lambda w: w["p99_ratio"])[(len(swaps) - 1) // 2]
    return {**median, "p99_ratio_spread": spread(ratios), "swaps": swaps,
            "completed": all(w["completed"] for w in swaps),
            "failed": sum(w["failed"] for w in swaps),
            "requests": sum(w["requests"] for w in swaps)}


def swap_test(server: Server, wrk: Wrk, script: Path, version_2: Path, args: argparse.Namespace,
              *, new: int = 2) -> dict:
    """Back-to-back 1 s windows of the small load; version ``new`` is published during one of
    them, replacing ``new - 1``."""
    base = Path(server.command[server.command.index("--model_base_path") + 1])
    staging = base / STAGING
    shutil.copytree(version_2, staging)  # staged before the load: the publish is one rename
    load = LOADS[0]
    url = server.url + PREDICT_PATH
    wait_idle([server])
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
    return {**swap_report(windows, published, poller, args.swap_steady), "version": new}


def swap_report(windows: list[Run], published: float, poller: StatusPoller, steady: int
                ) -> dict:
    end = poller.v1_end
    during = [w for w in windows[steady:] if end is None or w.started <= end]
    steady_p99 = statistics.median(w.p99_ms for w in windows[:steady])
    swap_p99 = max(w.p99_ms for w in during)
    return {
        "completed": end is not None,
        "v2_available_after_s": None if poller.v2_available is None
        else poller.v2_available - published,
        "v1_end_after_s": None if end is None else end - published,
        "steady_windows": steady, "swap_windows": len(during),
        "steady_p99_ms": steady_p99, "swap_p99_ms": swap_p99,
        "p99_ratio": swap_p99 / steady_p99 if steady_p99 else float("inf"),
        "failed": sum(w.failed for w in windows),
        "failed_in_swap_windows": sum(w.failed for w in during),
        "requests": sum(w.requests for w in windows),
        "states": [{"t": t - published, "states": s} for t, s in poller.states],
        "windows": [{**w.to_json(), "t": w.started - published} for w in windows],
    }


# ------------------------------------------------------------------------------ profile


def profile(server: Server, wrk: Wrk, scripts: dict[str, Path], seconds: int, tmp: Path
            ) -> dict:
    """py-spy samples of ``server`` under each load: CPU by thread, tfprod function and leaf."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(py_spy):
        console.print("py-spy not installed; no profile", style="yellow")
        return {}
    out = {}
    for load in LOADS:
        raw = tmp / f"profile-{load.name}.txt"
        started = wrk.start(server.url + PREDICT_PATH, scripts[load.name], load.connections,
                            seconds + 2)
        time.sleep(1)
        spy = subprocess.run([py_spy, "record", "-p", str(server.proc.pid), "-d", str(seconds),
                              "-r", "100", "-f", "raw", "-o", str(raw), "--threads",
                              "--nonblocking"], capture_output=True, text=True,
                             timeout=seconds + 60)
        run = wrk.finish(started, seconds + 2, load.instances)
        if spy.returncode != 0 or not raw.exists():
            console.print(f"py-spy failed: {spy.stderr.strip()[-300:]}", style="yellow")
            return {}
        out[load.name] = {**collapse(raw.read_text()), "rps_while_sampled": run.rps}
    return out


_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
_THREAD = re.compile(r"^thread \(\d+\): ?")


def _frame(text: str) -> str:
    """``module.py:function`` of one py-spy frame (``function (path/module.py:line)``)."""
    match = _FRAME.match(text)
    if match is None:
        return text
    path = match.group("file")
    return f"{path.rsplit('/', 1)[-1]}:{match.group('fn')}" if path else match.group("fn")


def _own(text: str) -> bool:
    match = _FRAME.match(text)
    return match is not None and "tfprod/" in match.group("file")


def collapse(raw: str, top: int = 12) -> dict:
    """Shares of samples by thread, by the innermost tfprod function (inclusive of what it
    calls: orjson, numpy, TensorFlow) and by leaf Python function, from collapsed stacks."""
    threads: collections.Counter = collections.Counter()
    tfprod: collections.Counter = collections.Counter()
    leaves: collections.Counter = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        thread, *frames = stack.split(";")
        threads[_THREAD.sub("", thread) or thread] += n
        leaves[_frame(frames[-1]) if frames else "(no Python frame)"] += n
        own = [f for f in frames if _own(f)]
        tfprod[_frame(own[-1]) if own else "(outside tfprod code)"] += n

    def shares(counter: collections.Counter) -> list[list]:
        return [[k, v / total] for k, v in counter.most_common(top)]

    return {"samples": total, "threads": shares(threads), "tfprod": shares(tfprod),
            "leaves": shares(leaves)}


# ------------------------------------------------------------------------------ report


def _ms(s: dict) -> str:
    return f"{s['median']:,.1f} ({s['min']:,.1f}-{s['max']:,.1f})"


def _rate(s: dict) -> str:
    return f"{s['median']:,.0f} ({s['min']:,.0f}-{s['max']:,.0f})"


def _x(r: dict | None) -> str:
    return "n/a" if r is None else f"{r['of_medians']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"


def print_results(summary: dict, inproc: dict, args: argparse.Namespace) -> None:
    for load in LOADS:
        table = Table(title=f"{load.name} requests: {load.instances} instance(s) each, "
                            f"concurrency {load.connections}, {args.duration} s x "
                            f"{args.repeats} (median, min-max)", title_justify="left")
        for c in ("server", "req/s", "samples/s", "p50 ms", "p99 ms", "failed / requests"):
            table.add_column(c)
        for name, by_load in summary.items():
            s = by_load[load.name]
            table.add_row(SERVER_LABELS[name], _rate(s["rps"]), _rate(s["samples_per_s"]),
                          _ms(s["p50_ms"]), _ms(s["p99_ms"]),
                          f"{s['failed']} / {s['requests']:,} ({s['non_2xx']} non-2xx)")
        console.print(table)
    console.print(f"model in-process, exported signature at batch 64: "
                  f"{_rate(inproc)} samples/s", highlight=False)


def print_ratios(runs: dict) -> None:
    table = Table(title="as multiples of the other servers: small loads in req/s, large in "
                        "samples/s (of the medians; min-max over repeats)", title_justify="left")
    table.add_column("server")
    others = [o for o in ("noop", "fastapi", "flask") if o in runs]
    for load in LOADS:
        for o in others:
            table.add_column(f"{load.name} / {o}")
    for name in runs:
        table.add_row(SERVER_LABELS[name], *(
            _x(ratio(runs, name, o, load.name, "rps" if load.instances == 1 else "sps"))
            for load in LOADS for o in others))
    console.print(table)


def print_swap(swap: dict) -> None:
    table = Table(title=f"version swap under the small load, the median of {len(swap['swaps'])} "
                        f"swaps (1 s wrk windows; publish = rename of a staged folder to "
                        f"BASE/{swap['version']})", title_justify="left")
    for c in ("window t (s)", "req/s", "p50 ms", "p99 ms", "failed", "phase"):
        table.add_column(c)
    steady, n_swap = swap["steady_windows"], swap["swap_windows"]
    for i, w in enumerate(swap["windows"]):
        phase = "steady" if i < steady else "swap" if i < steady + n_swap else "after"
        table.add_row(f"{w['t']:+.1f}", f"{w['rps']:,.0f}", f"{w['p50_ms']:.1f}",
                      f"{w['p99_ms']:.1f}", str(w["non_2xx"] + w["socket_errors"]), phase)
    console.print(table)
    fmt = lambda v: "never" if v is None else f"{v:.2f} s"  # noqa: E731
    v = swap["version"]
    r = swap["p99_ratio_spread"]
    console.print(f"version {v} AVAILABLE after {fmt(swap['v2_available_after_s'])}, version "
                  f"{v - 1} END after {fmt(swap['v1_end_after_s'])}; p99 steady "
                  f"{swap['steady_p99_ms']:.1f} ms, during the swap {swap['swap_p99_ms']:.1f} ms "
                  f"({swap['p99_ratio']:.2f}x; over all swaps {r['min']:.2f}-{r['max']:.2f}x); "
                  f"failed {swap['failed']} of {swap['requests']:,} over all swaps",
                  highlight=False)


def print_profile(prof: dict) -> None:
    for load, p in prof.items():
        table = Table(title=f"tfprod serve --enable_batching under the {load} load: py-spy, "
                            f"{p['samples']:,} samples of non-idle threads "
                            f"({p['rps_while_sampled']:,.0f} req/s while sampled)",
                      title_justify="left")
        for c in ("thread", "share", "innermost tfprod function", "share", "leaf function",
                  "share"):
            table.add_column(c)
        rows = max(len(p["threads"]), len(p["tfprod"]), len(p["leaves"]))
        for i in range(rows):
            cells = []
            for key in ("threads", "tfprod", "leaves"):
                k, v = p[key][i] if i < len(p[key]) else ("", None)
                cells += [k, "" if v is None else f"{100 * v:.1f}%"]
            table.add_row(*cells)
        console.print(table)


def _target(figure: str, value: float | None, target: str, ok: bool | None) -> dict:
    return {"figure": figure, "value": value, "target": target, "pass": ok}


def _of_medians(runs: dict, name: str, other: str, load: str, attr: str = "rps"
                ) -> float | None:
    r = ratio(runs, name, other, load, attr)
    return None if r is None else r["of_medians"]


def targets(summary: dict, runs: dict, swap: dict | None) -> list[dict]:
    """The issue's targets; ``pass`` is None for implied ones that could not be measured."""
    rows = []
    if "tfprod-batching" not in summary or "noop" not in summary:
        return rows
    p99 = summary["tfprod-batching"]["small"]["p99_ms"]["median"]
    small = _of_medians(runs, "tfprod-batching", "noop", "small")
    large = _of_medians(runs, "tfprod-batching", "noop", "large", "sps")
    rows += [
        _target("batching, small c=64: req/s / ceiling's", small, ">= 0.5",
                small is not None and small >= 0.5),
        _target("batching, small c=64: p99 (ms)", p99, "<= 50", p99 <= 50),
        _target("batching, large c=8: samples/s / ceiling's", large, ">= 0.75",
                large is not None and large >= 0.75),
    ]
    for other, bound in (("fastapi", 4.0), ("flask", 100.0)):
        if other in summary:
            r = _of_medians(runs, "tfprod-batching", other, "small")
            rows.append(_target(f"batching, small c=64: req/s / {other}'s (implied)", r,
                                f">= {bound:g}", None if r is None else r >= bound))
    if swap is not None:
        done = swap["completed"]
        rows += [
            _target("swap: failed requests", swap["failed"], "0", done and swap["failed"] == 0),
            _target("swap: p99 / steady p99", swap["p99_ratio"], "<= 2",
                    done and swap["p99_ratio"] <= 2),
        ]
    return rows


def print_targets(rows: list[dict]) -> None:
    table = Table(title="targets (issue 6)", title_justify="left")
    for c in ("figure", "value", "target", "verdict"):
        table.add_column(c)
    verdicts = {True: "[green]PASS[/]", False: "[red]FAIL[/]", None: "n/a"}
    for row in rows:
        value = "n/a" if row["value"] is None else f"{row['value']:,.2f}"
        table.add_row(row["figure"], value, row["target"], verdicts[row["pass"]])
    console.print(table)


# ------------------------------------------------------------------------------ main


#: Run lengths of a full run and of ``--quick``; a flag given explicitly wins.
FULL = {"duration": 5, "repeats": 3, "warmup": 2, "swap_steady": 5, "swaps": 3,
        "profile_seconds": 8, "epochs": 3}
QUICK = {"duration": 2, "repeats": 1, "warmup": 1, "swap_steady": 3, "swaps": 1,
         "profile_seconds": 0, "epochs": 1}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: " + ", ".join(
        f"{k} {v}" for k, v in QUICK.items()))
    parser.add_argument("--duration", type=int, help=f"seconds per wrk run ({FULL['duration']})")
    parser.add_argument("--repeats", type=int,
                        help=f"runs per server and load ({FULL['repeats']})")
    parser.add_argument("--warmup", type=int, help="seconds of warm-up per server and load "
                        f"before the first run ({FULL['warmup']}; 0: none)")
    parser.add_argument("--swap-steady", type=int,
                        help=f"1 s windows before the publish ({FULL['swap_steady']})")
    parser.add_argument("--profile-seconds", type=int, help="py-spy sampling of the batching "
                        f"server per load ({FULL['profile_seconds']}; 0: none)")
    parser.add_argument("--epochs", type=int, help=f"training epochs ({FULL['epochs']})")
    parser.add_argument("--servers", default=",".join(SERVER_LABELS),
                        help="comma-separated subset of: " + ", ".join(SERVER_LABELS))
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (the client "
                        "shares the CPU with the server)")
    parser.add_argument("--wrk-timeout", type=float, default=30.0,
                        help="seconds before wrk counts a request as timed out")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-timeout-micros", type=int, default=5000)
    parser.add_argument("--num-batch-threads", type=int, default=1)
    parser.add_argument("--max-enqueued-batches", type=int, default=32)
    parser.add_argument("--swaps", type=int, help=f"version swaps ({FULL['swaps']})")
    parser.add_argument("--swap-timeout", type=float, default=60.0,
                        help="seconds to wait for the swap to finish")
    parser.add_argument("--seed", type=int, default=0)
    add_machine_args(parser)
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.duration < 1 or args.repeats < 1 or args.swap_steady < 1 or args.swaps < 1:
        parser.error("--duration, --repeats, --swap-steady and --swaps must be >= 1")
    names = [n for n in args.servers.split(",") if n]
    unknown = sorted(set(names) - set(SERVER_LABELS))
    if unknown:
        parser.error(f"--servers: unknown {unknown}; expected some of {list(SERVER_LABELS)}")
    args.servers = [n for n in SERVER_LABELS if n in names]
    return args


def make_servers(names: list[str], tmp: Path, model: dict, batching_file: Path
                 ) -> list[Server]:
    """The servers to run; each tfprod server gets its own copy of the base path."""
    keras_args = ["--model", str(model["keras"])]
    servers = []
    for name in names:
        if name == "noop":
            servers.append(baseline(name, "fastapi_noop.py", free_port(), tmp, []))
        elif name == "fastapi":
            servers.append(baseline(name, "fastapi_function.py", free_port(), tmp, keras_args))
        elif name == "flask":
            servers.append(baseline(name, "flask_predict.py", free_port(), tmp, keras_args))
        else:
            base = tmp / f"base-{name}"
            shutil.copytree(model["version_1"], base / "1")
            servers.append(tfprod_server(name, base, tmp, batching_file
                                         if name == "tfprod-batching" else None))
    return servers


def run_benchmark(args: argparse.Namespace, tmp: Path, info: dict) -> dict:
    console.print("training and exporting the digits CNN", style="bold")
    model = train_and_export(tmp, args.epochs, args.seed)
    console.print(f"{model['params']:,} parameters, test accuracy {model['accuracy']:.3f}, "
                  f"trained in {model['train_seconds']:.1f} s", highlight=False)
    bodies = write_bodies(tmp, model["x_test"])
    scripts = {name: write_lua(path) for name, path in bodies.items()}
    batching_file = tmp / "batching.config"
    batching_file.write_text(batching_text(args))
    inproc = spread(in_process(model["version_1"], model["x_test"], 2.0 if args.quick else 3.0,
                               args.repeats))
    wrk = Wrk(args.wrk_threads, args.wrk_timeout)
    servers = make_servers(args.servers, tmp, model, batching_file)
    results: dict = {"batching_parameters": batching_text(args), "in_process_batch64": inproc,
                     "model": {"params": model["params"], "accuracy": model["accuracy"]}}
    try:
        console.print(f"starting {', '.join(s.name for s in servers)}", style="bold")
        results["ready_seconds"] = ready = start_all(servers)
        console.print("ready after " + ", ".join(f"{k} {v:.1f} s" for k, v in ready.items()),
                      style="dim", highlight=False)
        check_answers(servers, {k: p.read_bytes() for k, p in bodies.items()},
                      model["expected"])
        if args.max_load is not None:
            wait_for_load(args.max_load, args.max_wait, console)
        info["load_average_start"] = list(os.getloadavg())
        console.print("measuring (wrk on 127.0.0.1)", style="bold")
        runs = measure(servers, wrk, scripts, args)
        results["summary"] = summary = summarize(runs)
        by_name = {s.name: s for s in servers}
        batching = by_name.get("tfprod-batching")
        if batching is not None and args.profile_seconds:
            console.print("profiling tfprod serve --enable_batching (py-spy)", style="bold")
            results["profile"] = profile(batching, wrk, scripts, args.profile_seconds, tmp)
        swap = None
        if batching is not None:
            console.print("version swap under load", style="bold")
            wait_idle(servers)
            results["swap"] = swap = swap_tests(batching, wrk, scripts["small"],
                                                model["version_2"], args)
    finally:
        for s in servers:
            s.stop()
    console.print(f"batching parameters: {batching_text(args).strip()}".replace("\n", "; "),
                  highlight=False)
    print_results(summary, inproc, args)
    print_ratios(runs)
    if results.get("profile"):
        print_profile(results["profile"])
    if swap is not None:
        print_swap(swap)
    results["targets"] = rows = targets(summary, runs, swap)
    print_targets(rows)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C (even when started with SIGINT ignored, e.g. in the background) and SIGTERM unwind
    # through the finally that stops the servers.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runtime.configure(verbose=False)
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="tfprod-serving-") as tmp:
        try:
            results = run_benchmark(args, Path(tmp), info)
        except KeyboardInterrupt:
            console.print("interrupted; every server stopped", style="yellow")
            return 130
    info["load_average_end"] = list(os.getloadavg())
    console.print(f"machine: {info}", style="dim")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "args": {
            k: v for k, v in vars(args).items() if k != "json"}, **results}, indent=2,
            default=str))
        console.print(f"wrote {args.json}")
    return 0 if all(r["pass"] is not False for r in results["targets"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
