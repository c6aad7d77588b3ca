"""`tfprod monitor drift|profile` end to end, as a subprocess of the installed CLI."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np

from monitor_data import planted_table

TFPROD = shutil.which("tfprod", path=os.path.dirname(sys.executable)) or "tfprod"


def _run(*args):
    return subprocess.run([TFPROD, *map(str, args)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "100"})


def _write(path, table):
    np.savez(path, **{k: (v.astype(str) if v.dtype == object else v) for k, v in table.items()})


def test_monitor_drift_exit_status_table_json_and_html(tmp_path):
    rng = np.random.default_rng(0)
    _write(tmp_path / "ref.npz", planted_table(rng, 3000))
    _write(tmp_path / "same.npz", planted_table(rng, 3000))
    _write(tmp_path / "shifted.npz", planted_table(rng, 3000, mean_shift=True))
    clean = _run("monitor", "drift", tmp_path / "ref.npz", tmp_path / "same.npz")
    assert clean.returncode == 0, clean.stderr
    assert "0 of 50 features drifted" in clean.stdout and "no drift" in clean.stdout
    out = _run("monitor", "drift", tmp_path / "ref.npz", tmp_path / "shifted.npz",
               "--json", tmp_path / "d.json", "--html", tmp_path / "d.html")
    assert out.returncode == 1, out.stderr
    assert "3 of 50 features drifted" in out.stdout
    doc = json.loads((tmp_path / "d.json").read_text())
    assert sorted(doc["drifted"]) == ["f0", "f1", "f2"] and doc["dataset_drift"]
    assert (tmp_path / "d.html").read_text().startswith("<!doctype html>")


def test_monitor_drift_bad_input_is_one_line_exit_2(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros(5), y=np.zeros(5))
    np.savez(tmp_path / "b.npz", x=np.zeros(5))
    out = _run("monitor", "drift", tmp_path / "a.npz", tmp_path / "b.npz")
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "missing y" in lines[0] and lines[0].startswith("error:")


def test_monitor_profile_merges_shards(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "s0.npy", rng.standard_normal((100, 2)))
    np.save(tmp_path / "s1.npy", rng.standard_normal((60, 2)))
    first = _run("monitor", "profile", tmp_path / "s1.npy", "--out", tmp_path / "s1.profile.npz")
    assert first.returncode == 0, first.stderr
    out = _run("monitor", "profile", tmp_path / "s0.npy", "--out", tmp_path / "all",
               "--merge", tmp_path / "s1.profile.npz")
    assert out.returncode == 0, out.stderr
    assert "profile of 160 rows" in out.stdout
    assert (tmp_path / "all.profile.npz").exists()


def test_monitor_skew_table_json_exit_status_and_bad_input(tmp_path):
    rng = np.random.default_rng(2)
    _write(tmp_path / "train.npz", planted_table(rng, 3000))
    _write(tmp_path / "same.npz", planted_table(rng, 3000))
    served = planted_table(rng, 3000, categorical=True)
    served["f7"] = served["f7"] * 3 + 2  # a unit change at serving time
    _write(tmp_path / "served.npz", served)
    clean = _run("monitor", "skew", tmp_path / "train.npz", tmp_path / "same.npz")
    assert clean.returncode == 0, clean.stderr
    assert "0 of 50 features skewed" in clean.stdout and "no skew" in clean.stdout
    out = _run("monitor", "skew", tmp_path / "train.npz", tmp_path / "served.npz",
               "--json", tmp_path / "s.json")
    assert out.returncode == 1, out.stderr
    assert "2 of 50 features skewed" in out.stdout and "SKEW" in out.stdout
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["skew"] and sorted(doc["skewed"]) == ["color", "f7"]
    assert doc["predictions"] is None and doc["serving_rows"] == 3000
    np.savez(tmp_path / "a.npz", x=np.zeros(5), y=np.zeros(5))
    np.savez(tmp_path / "b.npz", x=np.zeros(5))
    for args, message in [((tmp_path / "a.npz", tmp_path / "b.npz"), "missing y"),
                          ((tmp_path / "a.npz", tmp_path / "nothing.db"), "no request log there"),
                          ((tmp_path / "a.npz", tmp_path / "b.npz", "--l-infinity", "2"),
                           "--l-infinity 2; expected a distance in (0, 1]"),
                          ((tmp_path / "a.npz", tmp_path / "a.npz", "--keras", "m.keras"),
                           "no served outputs to compare with --keras")]:
        bad = _run("monitor", "skew", *args)
        lines = [line for line in bad.stderr.splitlines() if line.strip()]
        assert bad.returncode == 2 and len(lines) == 1 and message in lines[0], bad.stderr
