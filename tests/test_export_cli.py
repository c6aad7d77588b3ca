"""`tfprod export` as a user runs it: a subprocess of the installed command."""

import json
import os

import numpy as np
import pytest

from test_cli import run


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    """`tfprod data sample --format tfrecord` output: the CLI takes its train split."""
    from tfprod.data import write_sample

    out = tmp_path_factory.mktemp("sample") / "digits"
    write_sample(out, "tfrecord", image_size=32)
    return out


def test_export_help_has_an_example():
    r = run("export", "--help")
    assert r.returncode == 0 and "Example:" in r.stdout and "--overwrite" in r.stdout


def test_export_writes_a_version_keras_and_weights(digits_cnn, sample_dir, tmp_path):
    base = tmp_path / "models" / "digits"
    r = run("export", digits_cnn.keras_path, str(base), "--data", str(sample_dir), "--top-k",
            "2", "--keras", str(tmp_path / "out.keras"), "--weights",
            str(tmp_path / "out.weights.h5"), "--json", str(tmp_path / "r.json"))
    assert r.returncode == 0, r.stderr
    for text in ("SavedModel", "version 1", "warmup requests", "1438 examples", "image",
                 "(None, 32, 32, 1)", "probabilities", "(None, 10)", "classes"):
        assert text in r.stdout, text
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["version"] == 1 and report["path"] == str(base / "1")
    assert report["signature"]["outputs"] == {
        "probabilities": {"dtype": "float32", "shape": [None, 10]}}
    assert report["reference_examples"] == 1438 and report["warmup_requests"] == 4
    # An image model: the penultimate layer is exported and the sample keeps its embeddings.
    width = report["endpoints"]["embedding"]["outputs"]
    (shape,) = [v["shape"] for v in width.values()]
    assert "with embeddings" in r.stdout
    with np.load(base / "1" / "assets.extra" / "tfprod" / "reference_sample.npz") as z:
        assert z["embeddings"].shape == (len(z["inputs/image"]), shape[1])
        assert z["embeddings"].dtype == np.float32 and np.isfinite(z["embeddings"]).all()
    assert os.path.getsize(tmp_path / "out.keras") > 0
    assert os.path.getsize(tmp_path / "out.weights.h5") > 0
    assert sorted(os.listdir(base)) == ["1"]

    # The same version again: refused, version 1 untouched, nothing else written.
    before = os.path.getmtime(base / "1" / "saved_model.pb")
    r = run("export", digits_cnn.keras_path, str(base), "--version", "1")
    assert r.returncode == 2
    assert "version 1 already exists" in r.stderr and "--overwrite" in r.stderr
    assert os.path.getmtime(base / "1" / "saved_model.pb") == before
    assert sorted(os.listdir(base)) == ["1"]


def test_export_bad_model_path_is_one_line_exit_2(tmp_path):
    r = run("export", str(tmp_path / "missing.keras"), str(tmp_path / "m"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "missing.keras: no such file" in r.stderr
    assert not (tmp_path / "m").exists()
    (tmp_path / "broken.keras").write_bytes(b"not a zip file")
    r = run("export", str(tmp_path / "broken.keras"), str(tmp_path / "m"), "--keras",
            str(tmp_path / "out.keras"))
    assert r.returncode == 2 and "cannot load it as a Keras model" in r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert sorted(os.listdir(tmp_path)) == ["broken.keras"]
