"""Batched prediction with every exported kind gives model.predict's answers, in every format."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from test_cli import run
from tfprod.errors import TfprodError
from tfprod.export.litert import to_litert
from tfprod.export.predict import load_predictor, predict, resolve_saved_model


@pytest.fixture(scope="module")
def exported(digits_cnn, tmp_path_factory):
    """The digits CNN as .keras, a TF Serving base folder (version 1) and a float32 .tflite."""
    root = tmp_path_factory.mktemp("predict")
    digits_cnn.model.export(str(root / "serving" / "1"), verbose=False)
    to_litert(digits_cnn.model, root / "model.tflite", "float32")
    np.save(root / "x_test.npy", digits_cnn.x_test)
    return {"keras": digits_cnn.keras_path, "savedmodel": str(root / "serving"),
            "tflite": str(root / "model.tflite"), "npy": str(root / "x_test.npy"),
            "root": root}


@pytest.fixture(scope="module")
def expected(digits_cnn):
    return digits_cnn.model.predict(digits_cnn.x_test, batch_size=256, verbose=0)


@pytest.mark.parametrize("kind", ["keras", "savedmodel", "tflite"])
def test_every_kind_gives_model_predict_argmax(exported, expected, kind, tmp_path):
    out = tmp_path / "p.npy"
    result = predict(exported[kind], exported["npy"], out, batch_size=100)
    got = np.load(out)
    assert result.examples == len(expected) and result.output_shape == expected.shape
    np.testing.assert_array_equal(got.argmax(axis=1), expected.argmax(axis=1))
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert result.examples_per_second > 0 and 0 < result.model_seconds <= result.seconds


def test_csv_and_jsonl_hold_one_row_per_example(exported, expected, tmp_path):
    predict(exported["tflite"], exported["npy"], tmp_path / "p.csv")
    predict(exported["tflite"], exported["npy"], tmp_path / "p.jsonl")
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(expected)
    assert list(rows[0]) == ["index", "class"] + [f"output_{j}" for j in range(10)]
    assert [int(r["class"]) for r in rows] == expected.argmax(axis=1).tolist()
    np.testing.assert_allclose([float(r["output_3"]) for r in rows], expected[:, 3], atol=1e-4)
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(len(expected)))
    assert [r["class"] for r in records] == expected.argmax(axis=1).tolist()
    np.testing.assert_allclose([r["output"] for r in records], expected, atol=1e-4)


def test_image_folder_rows_name_their_files_in_order(digits_cnn, exported, tmp_path):
    folder = tmp_path / "images"
    for i, (image, label) in enumerate(zip(digits_cnn.x_test[:24], digits_cnn.y_test[:24],
                                           strict=True)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[..., 0]).save(folder / str(label) / f"img_{i:03d}.png")
    predict(exported["keras"], folder, tmp_path / "p.jsonl", batch_size=5)
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(records) == 24
    files = [r["file"] for r in records]
    assert sorted(files) == sorted(str(p) for p in folder.glob("*/*.png"))
    index = [int(os.path.basename(f)[4:7]) for f in files]
    want = digits_cnn.model.predict(digits_cnn.x_test[index], verbose=0)
    np.testing.assert_allclose([r["output"] for r in records], want, atol=1e-4)


def test_tfrecord_folder_is_read_in_order(digits_cnn, exported, expected, tmp_path):
    from tfprod.data import write_tfrecords

    write_tfrecords(tmp_path / "rec", {"image": digits_cnn.x_test, "label": digits_cnn.y_test},
                    encodings={"image": "png"}, num_shards=3)
    result = predict(exported["tflite"], tmp_path / "rec", tmp_path / "p.npy", batch_size=64)
    assert result.examples == len(expected)
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), expected, atol=1e-4)


def test_saved_model_paths_resolve_to_the_newest_version(exported, tmp_path):
    base = exported["savedmodel"]
    assert resolve_saved_model(base) == os.path.join(base, "1")
    assert resolve_saved_model(os.path.join(base, "1")) == os.path.join(base, "1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TfprodError, match="no saved_model.pb and no version folder"):
        resolve_saved_model(tmp_path / "empty")


def test_bad_input_is_one_line_and_writes_nothing(exported, tmp_path):
    np.save(tmp_path / "wrong.npy", np.zeros((4, 28, 28, 1), np.uint8))
    cases = [
        ((exported["keras"], exported["npy"], tmp_path / "p.txt"), "expected a file ending in"),
        ((exported["keras"], tmp_path / "wrong.npy", tmp_path / "p.npy"), r"\(28, 28, 1\)"),
        ((exported["tflite"], tmp_path / "missing", tmp_path / "p.npy"), "no such file"),
        ((tmp_path / "model.onnx", exported["npy"], tmp_path / "p.npy"), "expected a .keras"),
    ]
    for args, message in cases:
        with pytest.raises(TfprodError, match=message) as e:
            predict(*args)
        assert "\n" not in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["wrong.npy"]


def test_keras_predictor_takes_any_batch_size_without_retracing(exported, digits_cnn):
    predictor = load_predictor(exported["keras"])
    for n in (1, 7, 64):
        assert predictor(digits_cnn.x_test[:n]).shape == (n, 10)
    assert len(predictor.function._list_all_concrete_functions()) == 1


def test_cli_predict_writes_predictions_and_prints_throughput(exported, expected, tmp_path):
    r = run("predict", exported["tflite"], exported["npy"], "--out", str(tmp_path / "p.csv"),
            "--batch-size", "64", "--json", str(tmp_path / "t.json"))
    assert r.returncode == 0, r.stderr
    assert f"{len(expected)} predictions" in r.stdout and "examples/s" in r.stdout
    assert json.loads((tmp_path / "t.json").read_text())["examples"] == len(expected)
    with open(tmp_path / "p.csv", newline="") as f:
        classes = [int(row["class"]) for row in csv.DictReader(f)]
    assert classes == expected.argmax(axis=1).tolist()


def test_predict_calls_the_model_once_per_batch(exported, expected, tmp_path):
    """The mechanism behind the throughput: whole batches per model call, not one example."""
    inner = load_predictor(exported["savedmodel"])
    sizes = []

    class Counting:
        example_shape = inner.example_shape

        def __getattr__(self, name):
            return getattr(inner, name)

        def __call__(self, x):
            sizes.append(len(x))
            return inner(x)

    n = len(expected)
    result = predict(Counting(), exported["npy"], tmp_path / "p.jsonl", batch_size=64)
    assert sizes == [64] * (n // 64) + ([n % 64] if n % 64 else [])
    assert result.examples == n
