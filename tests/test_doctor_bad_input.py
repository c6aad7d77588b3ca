"""tfprod.doctor on bad input: one clear TfprodError line, never a traceback."""

import json
import os
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfprod.doctor import diagnose, load_data, load_model
from tfprod.errors import TfprodError


def tiny(input_shape=(8,), *, compile_loss="sparse_categorical_crossentropy"):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(input_shape)
    h = keras.layers.Dense(8, activation="relu")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(h))
    if compile_loss:
        model.compile("adam", compile_loss)
    return model


def data(n=64, shape=(8,), batch_size=16):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, *shape)).astype("float32")
    y = rng.integers(0, 3, n)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# ------------------------------------------------------------------------------ the model


def test_a_missing_model_file(tmp_path):
    with pytest.raises(TfprodError, match="no such file") as e:
        load_model(str(tmp_path / "nope.keras"))
    one_line(e)


def test_a_corrupt_model_file(tmp_path):
    path = tmp_path / "broken.keras"
    path.write_bytes(b"this is not a zip archive")
    with pytest.raises(TfprodError, match="cannot load it as a Keras model") as e:
        load_model(str(path))
    one_line(e)


def test_a_model_function_that_cannot_be_imported_or_fails(tmp_path, monkeypatch):
    (tmp_path / "doctor_models.py").write_text(textwrap.dedent("""
        def broken():
            raise RuntimeError("no GPU named 'tpu0'")

        def not_a_model():
            return 42
    """))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TfprodError, match="cannot import"):
        load_model("no_such_module_xyz:build")
    with pytest.raises(TfprodError, match="calling it failed.*tpu0") as e:
        load_model("doctor_models:broken")
    one_line(e)
    with pytest.raises(TfprodError, match="expected a keras.Model"):
        load_model("doctor_models:not_a_model")
    sys.modules.pop("doctor_models", None)


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_a_saved_model_loads(tmp_path):
    path = str(tmp_path / "m.keras")
    tiny().save(path)
    assert isinstance(load_model(path), keras.Model)


def test_a_model_with_no_compiled_loss_asks_for_one():
    with pytest.raises(TfprodError, match="--loss") as e:
        diagnose(tiny(compile_loss=None), data())
    one_line(e)
    report = diagnose(tiny(compile_loss=None), data(), loss="sparse_categorical_crossentropy")
    # With the loss given, the checks that need it run (and pass on this healthy model).
    assert {"loss_pairing", "init_loss", "learning_rate", "overfit_batch"} <= set(report.passed)
    assert not report.failed, report.failed
    with pytest.raises(TfprodError, match="not a Keras loss"):
        diagnose(tiny(compile_loss=None), data(), loss="cross_entropy_please")


# ---------------------------------------------------------------------------- the dataset


@pytest.mark.parametrize("dataset, match", [
    (lambda: data(shape=(5,)), r"x is float32\[None, 5\] but the model expects \[None, 8\]"),
    (lambda: data().unbatch(), r"one example per element.*dataset.batch"),
    (lambda: data().map(lambda x, y: x), r"expected \(x, y\) batches"),
    (lambda: np.zeros((4, 8)), r"expected a tf.data.Dataset"),
    (lambda: tf.data.Dataset.from_tensor_slices(
        ({"a": np.zeros((16, 8), "float32"), "b": np.zeros((16, 8), "float32")},
         np.zeros(16, "int64"))).batch(4), r"select or stack"),
])
def test_a_dataset_that_does_not_fit_the_model(dataset, match):
    with pytest.raises(TfprodError, match=match) as e:
        diagnose(tiny(), dataset())
    one_line(e)


def test_a_subclassed_model_that_fails_on_the_batch():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(keras.ops.reshape(x, (-1, 7)))  # 8 features do not reshape to 7

    net = Net()
    net.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(TfprodError, match="fails on the dataset's first batch") as e:
        diagnose(net, data())
    one_line(e)


def test_an_empty_or_too_small_dataset():
    with pytest.raises(TfprodError, match="empty"):
        diagnose(tiny(), data().take(0))
    with pytest.raises(TfprodError, match="needs at least 8") as e:
        diagnose(tiny(), data(n=3))
    one_line(e)
    with pytest.raises(TfprodError, match="full mode needs at least 40.*quick mode"):
        diagnose(tiny(), data(n=30), mode="full")
    nan = tf.data.Dataset.from_tensor_slices(
        (np.full((20, 8), np.nan, "float32"), np.zeros(20, "int64"))).batch(8)
    with pytest.raises(TfprodError, match="free of NaN/Inf"):
        diagnose(tiny(), nan)


def test_a_small_dataset_skips_the_label_probe_and_says_so():
    report = diagnose(tiny(), data(n=24))
    assert "label_signal" in report.skipped
    assert report.num_examples == 24


def test_bad_arguments():
    with pytest.raises(TfprodError, match="mode='slow'"):
        diagnose(tiny(), data(), mode="slow")
    with pytest.raises(TfprodError, match="max_examples"):
        diagnose(tiny(), data(), max_examples=2)
    with pytest.raises(TfprodError, match="expected a keras.Model"):
        diagnose("model.keras", data())


# ------------------------------------------------------------------- load_data for the CLI


def test_load_data_reads_each_format_for_the_model(digits_dirs):
    from tfprod.models import mlp, small_cnn

    cnn = small_cnn((32, 32, 1), 10)
    images = load_data(digits_dirs["png"]["train"], model=cnn)
    assert images.element_spec[0].shape.as_list() == [None, 32, 32, 1]
    records = load_data(digits_dirs["tfrecord"]["train"], model=cnn)
    assert records.element_spec[0].shape.as_list()[1:] == [32, 32, 1]
    table = load_data(digits_dirs["csv"]["train"], model=mlp((64,), 10), label="label")
    assert table.element_spec[0].shape.as_list() == [None, 64]
    report = diagnose(mlp((64,), 10), table)
    assert report.findings[0].check == "input_scale"  # 0..16 pixels into an MLP with no scaling


def test_load_data_bad_input(digits_dirs, tmp_path):
    from tfprod.models import mlp

    with pytest.raises(TfprodError, match="no such file"):
        load_data(tmp_path / "nothing", model=tiny())
    with pytest.raises(TfprodError, match="pass --label"):
        load_data(digits_dirs["csv"]["train"], model=mlp((64,), 10))
    with pytest.raises(TfprodError, match=r"image folder but the model's input is \(8,\)"):
        load_data(digits_dirs["png"]["train"], model=tiny())
    with pytest.raises(TfprodError, match="expects"):
        diagnose(tiny((16, 16, 1)), load_data(digits_dirs["png"]["train"],
                                              model=tiny((32, 32, 1))))
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(TfprodError, match="expected an image folder"):
        load_data(other, model=tiny())


# ------------------------------------------------------------------------------ the verb


def test_the_verb_exits_1_on_errors_and_2_on_bad_input(digits_dirs, tmp_path, capsys):
    from tfprod.cli import main
    from tfprod.models import small_cnn

    good = str(tmp_path / "cnn.keras")
    small_cnn((32, 32, 1), 10).save(good)
    bad = str(tmp_path / "frozen.keras")
    frozen = small_cnn((32, 32, 1), 10)
    frozen.trainable = False
    frozen.compile("adam", "sparse_categorical_crossentropy")
    frozen.save(bad)
    out = tmp_path / "report.json"
    with pytest.raises(SystemExit) as e:
        main(["doctor", "--model", good, "--data", digits_dirs["png"]["train"], "--json",
              str(out), "--markdown", str(tmp_path / "report.md")])
    assert e.value.code in (0, None)
    assert out.exists() and (tmp_path / "report.md").exists()
    with pytest.raises(SystemExit) as e:
        main(["doctor", "--model", bad, "--data", digits_dirs["png"]["train"]])
    assert e.value.code == 1
    with pytest.raises(SystemExit) as e:
        main(["doctor", "--model", str(tmp_path / "missing.keras"), "--data",
              digits_dirs["png"]["train"]])
    assert e.value.code == 2
    assert "Traceback" not in capsys.readouterr().err
    assert os.path.exists(good)


def test_bad_class_weight_and_validation_data():
    with pytest.raises(TfprodError, match=r"class_weight='balanced'.*as given to fit") as e:
        diagnose(tiny(), data(), class_weight="balanced")
    one_line(e)
    with pytest.raises(TfprodError, match="class_weight=.*weight >= 0"):
        diagnose(tiny(), data(), class_weight={0: -1.0})
    with pytest.raises(TfprodError, match=r"validation_data: x is float32\[None, 5\] but the "
                                          r"model expects \[None, 8\]") as e:
        diagnose(tiny(), data(), validation_data=data(shape=(5,)))
    one_line(e)
    with pytest.raises(TfprodError, match="validation_data: dataset is a ndarray"):
        diagnose(tiny(), data(), validation_data=np.zeros((4, 8)))


def test_the_verb_compares_a_validation_split_in_a_subprocess(digits_dirs, tmp_path):
    """End to end as a user runs it: --validation pointing at the training folder itself."""
    import shutil
    import subprocess

    from tfprod.models import small_cnn

    model = str(tmp_path / "cnn.keras")
    keras.utils.set_random_seed(0)
    small_cnn((32, 32, 1), 10).save(model)
    tfprod = shutil.which("tfprod", path=os.path.dirname(sys.executable)) or "tfprod"
    train = digits_dirs["png"]["train"]
    out = tmp_path / "report.json"
    r = subprocess.run([tfprod, "doctor", "--model", model, "--data", train, "--validation",
                        train, "--json", str(out)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "COLUMNS": "160"})
    assert r.returncode == 1, r.stdout + r.stderr
    report = json.loads(out.read_text())
    first = report["findings"][0]
    assert (first["check"], first["severity"]) == ("validation_overlap", "error")
    assert first["values"]["share"] == 1.0 and report["failed"] == {}
    assert "validation examples also in the training data" in r.stdout
