"""`tfprod models recommender|styles|sequence`, run as a user runs them (tiny budgets)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

TFPROD = shutil.which("tfprod", path=os.path.dirname(sys.executable)) or "tfprod"


def run(*args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([TFPROD, *args], capture_output=True, text=True, timeout=timeout,
                          env={**env, "COLUMNS": "160"})


@pytest.mark.parametrize("verb", ["recommender", "styles", "sequence"])
def test_every_models_verb_has_help_with_an_example(verb):
    r = run("models", verb, "--help")
    assert r.returncode == 0 and "Example:" in r.stdout


def test_models_recommender_trains_evaluates_and_exports(tmp_path):
    r = run("models", "recommender", "--users", "300", "--items", "150", "--epochs", "2",
            "--export", str(tmp_path / "rec"), "--json", str(tmp_path / "r.json"))
    assert r.returncode == 0, r.stderr
    assert "recall@10" in r.stdout and "popularity (cold-start)" in r.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    names = [row["name"] for row in report["results"]]
    assert names[:2] == ["model", "popularity"]
    assert os.path.isfile(os.path.join(report["export"], "saved_model.pb"))


def test_models_recommender_bad_objective_is_one_line():
    r = run("models", "recommender", "--objective", "pairwise")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "expected implicit or ratings" \
        in r.stderr


def test_models_styles_probes_and_compares(tmp_path):
    r = run("models", "styles", "--epochs", "1", "--json", str(tmp_path / "s.json"))
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "s.json").read_text())
    assert not report["capabilities"]["summary before any data"]["subclassed"]["ok"]
    assert [row[2] for row in report["equivalence"]] == ["0.0e+00"] * 3


@pytest.mark.slow  # two BiGRU trainings (~20 s)
def test_models_sequence_compares_batching_and_exports(tmp_path):
    r = run("models", "sequence", "--sequences", "96", "--max-length", "32", "--median", "6",
            "--epochs", "2", "--units", "4", "--export", str(tmp_path / "seq"), "--json",
            str(tmp_path / "q.json"))
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "q.json").read_text())
    pad, bucketed = report["runs"]
    assert (pad["strategy"], bucketed["strategy"]) == ("pad_to_max", "bucketed")
    assert pad["waste_pct"] > bucketed["waste_pct"] + 20
    assert pad["batches"] == 2 and bucketed["batches"] >= 2  # 96 sequences, batches of 64
    assert pad["steps_per_s"] > 0 and 0 <= bucketed["accuracy"] <= 100
    assert os.path.isfile(os.path.join(report["export"], "saved_model.pb"))
