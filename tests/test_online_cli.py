"""`tfprod online run|status|bench` end to end, as subprocesses of the installed CLI."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from online_data import export_v1, shifted, tiny_mlp

TFPROD = shutil.which("tfprod", path=os.path.dirname(sys.executable)) or "tfprod"


def _run(*args, timeout=240):
    return subprocess.run([TFPROD, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "100"})


@pytest.mark.slow
def test_online_run_then_status(tmp_path):
    """A request log with labelled requests (as tfprod serve writes it) -> one round -> a
    canary version with its gate decision; status shows it; bad input is one line."""
    from tfprod.monitor.records import LogRecord
    from tfprod.monitor.store import open_store
    from tfprod.online.bench import split_digits

    x_tr, y_tr, x_te, y_te = split_digits(0)
    base = tmp_path / "digits"
    export_v1(tiny_mlp(x_tr[:600], y_tr[:600]), base, x_tr[:500], y_tr[:500])
    np.savez(tmp_path / "holdout.npz", pixels=x_te[:300], labels=y_te[:300])
    store = open_store(str(tmp_path / "log.db"))
    xs, ys, now = shifted(x_tr[600:900]), y_tr[600:900], time.time()
    store.write(LogRecord(f"r{i}", now + i * 1e-3, "digits", 1, "serving_default",
                          {"pixels": xs[i:i + 1]}, {"probabilities": np.zeros((1, 10))}, 1.0)
                for i in range(len(ys)))
    store.add_feedback("digits", [(f"r{i}", int(v)) for i, v in enumerate(ys)], now + 1)
    store.close()
    common = ["--model_base_path", base, "--log", tmp_path / "log.db", "--holdout",
              tmp_path / "holdout.npz", "--model_config_file", tmp_path / "models.config",
              "--model_name", "digits"]
    # runs until SIGTERM: the step in progress finishes, the state is kept, exit status 0
    proc = subprocess.Popen([TFPROD, "online", "run", *map(str, common), "--interval", "1s",
                             "--margin", "0.05", "--nice", "7", "--threads", "1",
                             "--json", str(tmp_path / "run.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "100"})
    events = tmp_path / "digits.online" / "events.jsonl"
    deadline = time.monotonic() + 180
    while not (events.exists() and '"canary"' in events.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
        time.sleep(0.2)
    # the learner runs nicer than this test by 7 (read from the kernel, not from the CLI)
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, proc.pid) == min(mine + 7, 19)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-2000:]
    assert "TensorFlow threads 1 intra-op / 1 inter-op" in stderr
    steps = json.loads((tmp_path / "run.json").read_text())["steps"]
    assert steps[0]["action"] == "canary" and steps[0]["version"] == 2
    assert all(s["action"] == "wait" for s in steps[1:])  # no labelled canary traffic yet
    assert "step: canary" in stdout and "stable version 1, canary 2" in stdout
    config = (tmp_path / "models.config").read_text()
    assert 'key: "canary" value: 2' in config and 'key: "stable" value: 1' in config

    out = _run("online", "status", base, "--log", tmp_path / "log.db", "--json",
               tmp_path / "status.json")
    assert out.returncode == 0, out.stderr
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["stable"] == 1 and status["canary"] == 2
    assert [v["blessed"] for v in status["versions"]] == [None, True]
    # per-version figures of the served traffic: the logged outputs all said class 0
    assert status["versions"][0]["labelled"] == 300
    assert status["versions"][0]["accuracy"] == pytest.approx(np.mean(ys == 0))
    assert status["versions"][1]["labelled"] == 0
    assert "canary" in out.stdout

    bad = _run("online", "run", *common[:5], tmp_path / "missing.npz", *common[6:])
    assert bad.returncode == 2
    assert "missing.npz: no such file or folder" in bad.stderr + bad.stdout


def test_online_bench_prints_the_table(tmp_path):
    out = _run("online", "bench", "--methods", "replay-100", "--epochs", "1",
               "--json", tmp_path / "bench.json")
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads((tmp_path / "bench.json").read_text())
    assert [r["method"] for r in results] == ["replay-100"]
    assert all(0 <= r["accuracy"] <= 1 for r in results)
    assert "split digits" in out.stdout and "replay-100" in out.stdout
    bad = _run("online", "bench", "--methods", "replay")
    assert bad.returncode == 2 and "expected finetune, ewc, lwf, replay-N" in bad.stderr + \
        bad.stdout
