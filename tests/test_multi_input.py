"""Models with several named inputs (numbers and a string column) through `tfprod optimize`,
`tfprod predict` and `tfprod doctor`: string features convert to LiteRT, a variant that cannot
take them is left out with its reason, and the other variants are still built."""

import csv
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfprod.data import preprocessing, read_csv
from tfprod.doctor import diagnose
from tfprod.export import export_saved_model
from tfprod.export.predict import KerasPredictor, load_predictor, predict
from tfprod.optimize import optimize

TFPROD = shutil.which("tfprod", path=os.path.dirname(sys.executable)) or "tfprod"


def _write(path, n, rng):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "color", "label"])
        for _ in range(n):
            a, b = rng.normal(size=2)
            color = rng.choice(["red", "green", "blue"])
            w.writerow([f"{a:.4f}", f"{b:.4f}", color, int(a + 1.5 * (color == "red") > b)])


@pytest.fixture(scope="module")
def tabular(tmp_path_factory):
    """A model on three named CSV columns (two numbers, one string), trained to ~90%."""
    root = tmp_path_factory.mktemp("tabular")
    rng = np.random.default_rng(0)
    _write(root / "train.csv", 600, rng)
    _write(root / "test.csv", 200, rng)
    keras.utils.set_random_seed(0)
    prep = preprocessing(str(root / "train.csv"), label="label")
    x = keras.layers.Dense(16, activation="relu")(prep.encoded)
    out = keras.layers.Dense(2, activation="softmax", name="probabilities")(x)
    model = keras.Model(prep.inputs, out, name="tabular")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(read_csv(str(root / "train.csv"), label="label", batch_size=32, seed=0),
              epochs=8, verbose=0)
    model.save(root / "tabular.keras")
    return root, model


def _split(root, name):
    ds = read_csv(str(root / name), label="label", batch_size=256, shuffle=False)
    return ds


def test_optimize_builds_litert_variants_from_string_features_and_refuses_xla(tabular,
                                                                             tmp_path):
    root, model = tabular
    report = optimize(model, _split(root, "train.csv"), _split(root, "test.csv"),
                      out_dir=tmp_path / "v", variants=["keras", "xla", "float32", "int8"],
                      runs=5)
    built = {r.name: r for r in report.results}
    assert set(built) == {"keras", "float32", "int8"}
    assert report.reference > 80
    assert built["float32"].metric == pytest.approx(report.reference, abs=0.01)
    assert 50 < built["int8"].metric <= 100  # calibrated on the named inputs, runs
    (name, reason), = report.refused
    assert name == "xla" and "string input(s) ['color']" in reason


@keras.saving.register_keras_serializable(package="tests")
class _Lowercase(keras.layers.Layer):
    """tf.strings.lower: a TensorFlow op that LiteRT's builtins do not have."""

    def call(self, x):
        return tf.strings.lower(x)

    def compute_output_spec(self, x):
        return keras.KerasTensor(x.shape, dtype="string")


def test_a_litert_kind_that_needs_select_tf_ops_is_refused_with_the_op(tmp_path):
    a = keras.Input((2,), name="a")
    color = keras.Input((1,), dtype="string", name="color")
    onehot = keras.layers.StringLookup(vocabulary=["red", "blue"], output_mode="one_hot")(
        _Lowercase()(color))
    out = keras.layers.Dense(2, activation="softmax")(keras.layers.Concatenate()([a, onehot]))
    model = keras.Model({"a": a, "color": color}, out)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    x = {"a": np.random.default_rng(0).normal(size=(40, 2)).astype("float32"),
         "color": np.array([["RED"], ["blue"]] * 20, dtype=object)}
    y = np.arange(40) % 2
    report = optimize(model, (x, y), (x, y), out_dir=tmp_path, variants=["keras", "float32"],
                      runs=3)
    assert [r.name for r in report.results] == ["keras"]
    (name, reason), = report.refused
    assert name == "float32" and "StringLower" in reason and "Flex" in reason


def test_predict_reads_named_inputs_for_every_kind_of_model(tabular, tmp_path):
    root, model = tabular
    version = export_saved_model(model, tmp_path / "base").path
    from tfprod.export.litert import to_litert

    tflite = to_litert(model, tmp_path / "m.tflite", "float32")
    want = KerasPredictor(model)({k: v for k, v in next(iter(
        read_csv(str(root / "test.csv"), batch_size=200, shuffle=False).as_numpy_iterator())
    ).items() if k != "label"})
    for source in (root / "tabular.keras", version, tflite):
        result = predict(source, root / "test.csv", tmp_path / "p.npy")
        assert result.examples == 200
        np.testing.assert_allclose(np.load(tmp_path / "p.npy"), want, rtol=1e-5, atol=1e-6)
    columns = np.loadtxt(root / "test.csv", delimiter=",", skiprows=1, dtype=str)
    np.savez(tmp_path / "x.npz", a=columns[:, 0].astype("float32"),
             b=columns[:, 1].astype("float32"), color=columns[:, 2])
    predict(load_predictor(version), tmp_path / "x.npz", tmp_path / "q.npy")
    np.testing.assert_allclose(np.load(tmp_path / "q.npy"), want, rtol=1e-5, atol=1e-6)


def test_doctor_diagnoses_a_model_with_named_inputs(tabular):
    root, model = tabular
    report = diagnose(model, _split(root, "train.csv"))
    assert not report.has_errors
    assert "overfit_batch" in report.passed


def test_optimize_cli_prints_the_refused_variant_and_builds_the_rest(tabular, tmp_path):
    root, _ = tabular
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    r = subprocess.run([TFPROD, "optimize", str(root / "tabular.keras"), "--data", str(root),
                        "--label", "label", "--variants", "keras,xla,dynamic", "--runs", "5",
                        "--out", str(tmp_path / "v")], capture_output=True, text=True,
                       timeout=300, env={**env, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert "xla not built: XLA compiles no string ops" in r.stdout
    assert os.path.isfile(tmp_path / "v" / "dynamic.tflite")


def test_doctor_cli_names_the_leaking_input_and_compares_validation_rows_with_strings(tmp_path):
    """`tfprod doctor` on four named inputs (one a string): the leaking one is named among
    them, and validation rows are matched on every input, the string one included."""
    rng = np.random.default_rng(1)
    rows = []
    for _ in range(300):
        a, b = rng.normal(size=2)
        color = str(rng.choice(["red", "green", "blue"]))
        y = int(a + 1.5 * (color == "red") > b)
        rows.append([f"{a:.4f}", f"{b:.4f}", color, f"{3 * y + rng.normal() * 0.01:.4f}", y])
    header = ["a", "b", "color", "leak", "label"]
    recolor = {"red": "green", "green": "blue", "blue": "red"}
    # 100 new rows, 20 copied from training, 10 copied but with another color (not copies).
    validation = rows[200:] + rows[:20] + [r[:2] + [recolor[r[2]]] + r[3:] for r in rows[20:30]]
    for name, part in (("train.csv", rows[:200]), ("val.csv", validation)):
        with open(tmp_path / name, "w", newline="") as f:
            csv.writer(f).writerows([header, *part])
    keras.utils.set_random_seed(0)
    prep = preprocessing(str(tmp_path / "train.csv"), label="label")
    out = keras.layers.Dense(2, activation="softmax")(
        keras.layers.Dense(8, activation="relu")(prep.encoded))
    model = keras.Model(prep.inputs, out, name="leaky")
    model.compile("adam", "sparse_categorical_crossentropy")
    model.save(tmp_path / "leaky.keras")
    r = subprocess.run([TFPROD, "doctor", "--model", str(tmp_path / "leaky.keras"),
                        "--data", str(tmp_path / "train.csv"), "--validation",
                        str(tmp_path / "val.csv"), "--label", "label", "--json",
                        str(tmp_path / "r.json")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr  # error findings: usable in CI
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["failed"] == {}
    found = {f["check"]: f for f in report["findings"]}
    assert list(found["leakage"]["values"]["columns"]) == ["leak"]
    assert found["validation_overlap"]["evidence"].startswith(
        "20 of 130 validation examples (15.4%)")
    assert {"overfit_batch", "validation_shift", "input_scale"} <= set(report["passed"])


def test_predict_cli_writes_named_input_predictions(tabular, tmp_path):
    root, model = tabular
    r = subprocess.run([TFPROD, "predict", str(root / "tabular.keras"), str(root / "test.csv"),
                        "--out", str(tmp_path / "p.jsonl")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    x = next(iter(read_csv(str(root / "test.csv"), batch_size=200, shuffle=False)
                  .as_numpy_iterator()))
    want = KerasPredictor(model)({k: v for k, v in x.items() if k != "label"})
    assert len(rows) == 200
    np.testing.assert_allclose([row["output"] for row in rows], want, rtol=1e-5, atol=1e-6)
    assert [row["class"] for row in rows] == want.argmax(axis=1).tolist()
