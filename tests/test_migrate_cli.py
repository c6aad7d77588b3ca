"""One smoke test per `tfprod migrate` verb and `tfprod bench graph`, run as a user runs them."""

import json
from pathlib import Path

import pytest

from test_cli import run

CORPUS = Path(__file__).parent / "data" / "tf1_corpus"


def test_migrate_code_prints_the_table_and_writes_reports(tmp_path):
    r = run("migrate", "code", str(CORPUS), "--out", str(tmp_path / "out"), "--report",
            str(tmp_path / "report.md"))
    assert r.returncode == 0, r.stderr
    assert "mlp_session.py:11" in r.stdout and "layers" in r.stdout
    summary = r.stdout.strip().splitlines()[-1]
    assert summary.startswith("12 Python files,") and "need work" in summary
    assert "| mlp_session.py:11 | layers | manual |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "out" / "stateless_layers.py").exists()
    assert "oneDNN" not in r.stderr and "absl" not in r.stderr


def test_migrate_code_bad_input_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import tensorflow as tf\ndef f(:\n")
    r = run("migrate", "code", str(bad), "--out", str(tmp_path / "out.py"))
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "bad.py:2:" in lines[0]
    assert not (tmp_path / "out.py").exists()
    r = run("migrate", "code", str(CORPUS), "--out", str(CORPUS / "x"))
    assert r.returncode == 2 and "inside SRC" in r.stderr


@pytest.mark.slow
def test_migrate_model_then_check(tf1_models, tmp_path):
    base = tmp_path / "legacy"
    r = run("migrate", "model", str(tf1_models / "mlp_frozen.pb"), str(base), "--json",
            str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stderr
    assert "published version 1" in r.stdout and "probs:0" in r.stdout
    assert json.loads((tmp_path / "m.json").read_text())["version"] == 1
    r = run("migrate", "check", str(base), "--json", str(tmp_path / "c.json"))
    assert r.returncode == 0, r.stderr + r.stdout
    assert "PASS: 1 outputs on 8 examples" in r.stdout
    assert json.loads((tmp_path / "c.json").read_text())["passed"] is True
    r = run("migrate", "check", str(base), str(tf1_models / "mlp_other.pb"))
    assert r.returncode == 1 and "FAIL (probs)" in r.stdout


def test_bench_graph_smoke(tmp_path):
    r = run("bench", "graph", "--batch", "4", "--hidden", "8", "--steps", "3", "--repeats", "1",
            "--modes", "session,function", "--json", str(tmp_path / "b.json"))
    assert r.returncode == 0, r.stderr
    assert "TF1 graph, Session.run + feed_dict" in r.stdout and "1.00x" in r.stdout
    data = json.loads((tmp_path / "b.json").read_text())
    assert set(data["rates"]) == {"session", "function"}
    r = run("bench", "graph", "--modes", "session,jit")
    assert r.returncode == 2 and "--modes 'session,jit'" in r.stderr


@pytest.mark.parametrize("verb", [["migrate", "code"], ["migrate", "model"],
                                  ["migrate", "check"], ["bench", "graph"]])
def test_every_migrate_verb_has_help_with_an_example(verb):
    r = run(*verb, "--help")
    assert r.returncode == 0 and "Example:" in r.stdout
