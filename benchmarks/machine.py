"""What every benchmark script records about the machine, and waiting for a quiet one."""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path


def machine_info() -> dict:
    import keras
    import tensorflow as tf

    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "load_average": list(os.getloadavg()),
    }


def wait_for_load(max_load: float, timeout: float, console) -> float:
    """Sleeps until the 1-minute load average is below ``max_load`` (or the timeout)."""
    deadline = time.monotonic() + timeout
    while (load := os.getloadavg()[0]) >= max_load and time.monotonic() < deadline:
        console.print(f"load {load:.2f} >= {max_load}; waiting", style="dim")
        time.sleep(30)
    return load


def add_machine_args(parser: argparse.ArgumentParser) -> None:
    """``--max-load``, ``--max-wait`` (see :func:`wait_for_load`) and ``--json``."""
    parser.add_argument("--max-load", type=float, default=None,
                        help="wait until the 1-minute load average is below this")
    parser.add_argument("--max-wait", type=float, default=600.0, help="seconds to wait for it")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
