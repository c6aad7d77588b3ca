"""Soak: ``tfprod serve`` for ``--minutes`` at half its measured capacity, a new version every
minute, the request log in a real PostgreSQL; leaks and drifts show over time.

Setup: a small classifier on the 8x8 digits (64 -> 64 -> 10, Keras) exported twice with
``tfprod.export.export_saved_model`` (version weights A and B); one ``tfprod serve`` process
on 127.0.0.1 with ``--request_log=postgresql://...`` (a PostgreSQL started for the run as in
the tests, ``tests/postgres_server.py``) and ``--file_system_poll_wait_seconds=1``.

1. Capacity: wrk, 16 connections, closed loop, 10 s, one request of one image at a time.
2. Soak: wrk in back-to-back 10 s windows at half that rate (8 connections, each pausing
   between an answer and its next request with wrk's ``delay()``, the pause calibrated once in
   a 5 s run). Every ``--swap-seconds`` a new
   version (A and B alternately) is published as an exporter does (copy to a hidden folder,
   rename) and the version before the previous one is deleted from disk. After each window:
   the server's RSS, open files and threads (``/proc/PID``), the window's p99 and failures.
3. The end: every answered request is in the request log (its rows >= the 2xx wrk counted;
   the excess, answers in flight when a wrk window ended, is at most 8 per window).

Targets (issue 17): RSS at the end within 10% of the RSS after warm-up (``--warmup-seconds``);
p99 flat within 1.5x (the median p99 of the last fifth of the windows over the median of the
first fifth after warm-up; the worst window is reported too); 0 failed requests.

    flock -x /tmp/tfprod-quiet.lock .venv/bin/python benchmarks/soak.py --minutes 30 \\
        --png docs/soak.png --json /tmp/soak.json
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

import numpy as np
from rich.console import Console
from rich.table import Table

from machine import add_machine_args, machine_info, wait_for_load
from serving_tools import Load, Server, Wrk, free_port, http, write_lua

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from postgres_server import PostgresServer  # noqa: E402  (the tests' real PostgreSQL)

console = Console()
MODEL = "soak"
CONNECTIONS = 8
TFPROD = [sys.executable, "-m", "tfprod"]


def export_versions(tmp: Path) -> tuple[Path, Path, np.ndarray]:
    """Two exports of the digits classifier with different weights; returns their folders and
    a test batch."""
    import keras
    from sklearn.datasets import load_digits

    from tfprod.export import export_saved_model

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,), name="pixels")
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax",
                                                   name="probabilities")(hidden))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    export_saved_model(model, tmp / "staged-a", version=1, reference_data=(x[:500], y[:500]),
                       warmup=1)
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    export_saved_model(model, tmp / "staged-b", version=1, reference_data=(x[:500], y[:500]),
                       warmup=1)
    return tmp / "staged-a" / "1", tmp / "staged-b" / "1", x


def proc_sample(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
            "threads": int(fields["Threads"]),
            "open_files": len(os.listdir(f"/proc/{pid}/fd"))}


class Swapper(threading.Thread):
    """Publishes a new version every ``every`` seconds; deletes the one before the previous."""

    def __init__(self, base: Path, sources: tuple[Path, Path], every: float):
        super().__init__(daemon=True, name="swapper")
        self.base, self.sources, self.every = base, sources, every
        self.version = 1
        self.swaps = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.every):
            self.version += 1
            tmp = self.base / f".tmp-{self.version}"
            shutil.copytree(self.sources[self.version % 2], tmp)
            os.rename(tmp, self.base / str(self.version))
            old = self.base / str(self.version - 2)
            if old.exists():
                shutil.rmtree(old)
            self.swaps += 1


def paced_script(body: Path, pause_ms: float) -> Path:
    """wrk's script for ``body`` with a pause of ``pause_ms`` before each request."""
    script = write_lua(body)
    script.write_text(script.read_text() + f"\nfunction delay()\n  return {round(pause_ms)}\nend\n")
    return script


def plot(samples: list[dict], warmup_s: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True)
    for ax, key, label in zip(axes, ("rss_mb", "open_files", "threads", "p99_ms"),
                              ("RSS (MB)", "open files", "threads", "p99 (ms)"), strict=True):
        ax.plot(t, [s[key] for s in samples], marker=".", lw=1)
        ax.axvline(warmup_s / 60, color="grey", ls="--", lw=0.8)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_title("tfprod serve soak: half capacity, a new version every minute")
    axes[-1].set_xlabel("minutes (dashed: end of warm-up)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def summarize(samples: list[dict], warmup_s: float) -> dict:
    after = [s for s in samples if s["t"] >= warmup_s]
    fifth = max(len(after) // 5, 1)
    first, last = after[:fifth], after[-fifth:]
    p99_first = statistics.median(s["p99_ms"] for s in first)
    p99_last = statistics.median(s["p99_ms"] for s in last)
    p99_median = statistics.median(s["p99_ms"] for s in after)
    rss_warm, rss_end = after[0]["rss_mb"], samples[-1]["rss_mb"]
    failed = sum(s["failed"] for s in samples)
    return {
        "windows": len(samples), "rss_after_warmup_mb": rss_warm, "rss_end_mb": rss_end,
        "rss_ratio": rss_end / rss_warm, "rss_max_mb": max(s["rss_mb"] for s in samples),
        "p99_first_ms": p99_first, "p99_last_ms": p99_last, "p99_ratio": p99_last / p99_first,
        "p99_worst_ms": max(s["p99_ms"] for s in after),
        "p99_worst_over_median": max(s["p99_ms"] for s in after) / p99_median,
        "open_files": [min(s["open_files"] for s in after), max(s["open_files"] for s in after)],
        "threads": [min(s["threads"] for s in after), max(s["threads"] for s in after)],
        "requests": sum(s["requests"] for s in samples), "failed": failed,
        "rate_rps": statistics.median(s["rps"] for s in samples),
        "targets": {"rss_within_10pct": abs(rss_end / rss_warm - 1) <= 0.10,
                    "p99_flat_1.5x": p99_last / p99_first <= 1.5, "zero_failed": failed == 0},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup-seconds", type=float, default=120.0)
    parser.add_argument("--swap-seconds", type=float, default=60.0)
    parser.add_argument("--window-seconds", type=int, default=10)
    parser.add_argument("--fraction", type=float, default=0.5,
                        help="share of the measured capacity to run at")
    parser.add_argument("--png", type=Path, default=None, help="write the time series here")
    add_machine_args(parser)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="tfprod-soak-"))
    pg = PostgresServer()
    server = None
    swapper = None
    try:
        url = pg.start()
        source_a, source_b, x = export_versions(tmp)
        base = tmp / MODEL
        base.mkdir()
        shutil.copytree(source_a, base / "1")
        rest_port = free_port()
        server = Server("soak", [*TFPROD, "serve", f"--model_name={MODEL}",
                                 f"--model_base_path={base}", f"--port={free_port()}",
                                 f"--rest_api_port={rest_port}", "--rest_api_host=127.0.0.1",
                                 "--grpc_host=127.0.0.1", f"--request_log={url}",
                                 "--file_system_poll_wait_seconds=1",
                                 "--monitoring_interval_seconds=0"],
                        rest_port, "/v1/ready", tmp / "serve.log")
        server.start()
        server.wait_ready(180)
        body = tmp / "body.json"
        body.write_text(json.dumps({"instances": x[:1].tolist()}))
        predict = f"{server.url}/v1/models/{MODEL}:predict"
        assert http("POST", predict, body.read_bytes())[0] == 200
        if args.max_load is not None:
            wait_for_load(args.max_load, args.max_wait, console)
        machine = machine_info()
        wrk = Wrk(1, 10.0)
        warm = wrk.run(predict, write_lua(body), Load("warm", 1, 16), 3)
        capacity = wrk.run(predict, write_lua(body), Load("capacity", 1, 16), 10)
        rate = args.fraction * capacity.rps
        # wrk's delay() pauses between one answer and the next request: calibrate the pause
        # once so that pause + latency gives the target rate.
        pause = CONNECTIONS * 1000.0 / rate
        calibration = wrk.run(predict, paced_script(body, pause), Load("pace", 1, CONNECTIONS), 5)
        pause = max(pause - (CONNECTIONS * 1000.0 / calibration.rps - pause), 1.0)
        console.print(f"capacity {capacity.rps:,.0f} req/s (p99 {capacity.p99_ms:.1f} ms); "
                      f"soaking at {rate:,.0f} req/s for {args.minutes:g} min (pause "
                      f"{pause:.1f} ms per connection)")
        script = paced_script(body, pause)
        swapper = Swapper(base, (source_a, source_b), args.swap_seconds)
        swapper.start()
        samples: list[dict] = []
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        while time.monotonic() < end:
            run = wrk.run(predict, script, Load("soak", 1, CONNECTIONS), args.window_seconds)
            server.check_alive()
            sample = {"t": time.monotonic() - t0, **proc_sample(server.pid),
                      "p99_ms": run.p99_ms, "p50_ms": run.p50_ms, "rps": run.rps,
                      "requests": run.requests, "failed": run.failed,
                      "version": swapper.version, "load_1m": os.getloadavg()[0]}
            samples.append(sample)
            console.print(f"{sample['t'] / 60:5.1f} min  rss {sample['rss_mb']:6.1f} MB  fds "
                          f"{sample['open_files']:3d}  threads {sample['threads']:3d}  p99 "
                          f"{run.p99_ms:6.1f} ms  {run.rps:6,.0f} req/s  failed {run.failed}  "
                          f"v{swapper.version}", highlight=False)
        swapper.stop_event.set()
        result = summarize(samples, min(args.warmup_seconds, samples[-1]["t"] / 2))
        result.update(capacity_rps=capacity.rps, target_rps=rate, swaps=swapper.swaps,
                      minutes=args.minutes, machine=machine, samples=samples)
        # Every answered request reached the log (or was counted as dropped).
        server.stop()
        from tfprod.monitor.store import open_store

        store = open_store(url, create=False)
        result["logged_rows"] = store.count(MODEL)
        store.close()
        runs = (warm, capacity, calibration)
        result["answered"] = sum(r.requests - r.non_2xx for r in runs) + sum(
            s["requests"] - s["failed"] for s in samples)
    finally:
        if swapper is not None:
            swapper.stop_event.set()
        if server is not None:
            server.stop()
        pg.cleanup()
    table = Table(title=f"soak: {args.minutes:g} min at {rate:,.0f} req/s "
                        f"({args.fraction:g} x {capacity.rps:,.0f}), {swapper.swaps} swaps")
    for c in ("measure", "value", "target"):
        table.add_column(c)
    t = result["targets"]
    table.add_row("RSS after warm-up -> end", f"{result['rss_after_warmup_mb']:.0f} -> "
                  f"{result['rss_end_mb']:.0f} MB ({result['rss_ratio']:.3f}x)",
                  f"within 10%: {'met' if t['rss_within_10pct'] else 'NOT met'}")
    table.add_row("p99 first -> last fifth", f"{result['p99_first_ms']:.1f} -> "
                  f"{result['p99_last_ms']:.1f} ms ({result['p99_ratio']:.2f}x)",
                  f"<= 1.5x: {'met' if t['p99_flat_1.5x'] else 'NOT met'}")
    table.add_row("p99 worst window", f"{result['p99_worst_ms']:.1f} ms "
                  f"({result['p99_worst_over_median']:.2f}x median)", "")
    table.add_row("failed / requests", f"{result['failed']} / {result['requests']:,}",
                  f"0: {'met' if t['zero_failed'] else 'NOT met'}")
    table.add_row("open files, threads", f"{result['open_files']}, {result['threads']}", "")
    # wrk does not count the answers in flight when a window ends; the server logged them.
    slack = CONNECTIONS * (len(result["samples"]) + 3) + 1
    extra = result["logged_rows"] - result["answered"]
    result["log_complete"] = 0 <= extra <= slack
    table.add_row("logged rows / answered", f"{result['logged_rows']:,} / "
                  f"{result['answered']:,}", f"all logged: {'yes' if extra >= 0 else 'NO'} "
                  f"(+{extra} cut off by wrk, <= {slack})")
    console.print(table)
    if args.png is not None:
        plot(result["samples"], min(args.warmup_seconds, samples[-1]["t"] / 2), args.png)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
