"""The task read from the labels, the heads and metrics that fit it, and the Target layer."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfprod.data.task import LabelTask, infer_task
from tfprod.errors import TfprodError
from tfprod.models import MacroF1, ScaledMeanSquaredError, Target, find_task, mlp


@pytest.mark.parametrize("labels, kind, classes", [
    (np.arange(90) % 3, "multiclass", (0, 1, 2)),
    (np.arange(120) % 12, "multiclass", tuple(range(12))),
    (np.arange(50) % 2, "binary", (0, 1)),
    (np.array(["red", "green", "blue"] * 10, dtype=object), "multiclass",
     ("blue", "green", "red")),
    (np.array([b"no", b"yes"] * 10, dtype=object), "binary", ("no", "yes")),
    (np.arange(60) % 3 + 1, "multiclass", (1, 2, 3)),       # class codes, not ids
    (np.array([-1, 1] * 20), "binary", (-1, 1)),
    (np.array([0.0, 1.0, 2.0] * 10), "multiclass", (0, 1, 2)),  # whole floats are ids
])
def test_classification_is_read_from_the_labels(labels, kind, classes):
    task = infer_task(labels, label="y")
    assert (task.kind, task.classes) == (kind, classes)
    assert task.units == (1 if kind == "binary" else len(classes))
    assert "label 'y'" in task.summary()


def test_regression_from_fractions_or_many_whole_numbers():
    rng = np.random.default_rng(0)
    y = rng.normal(150, 70, size=400)
    task = infer_task(y, label="price")
    assert task.kind == "regression" and task.classes is None
    assert task.mean == pytest.approx(y.mean()) and task.std == pytest.approx(y.std())
    whole = np.round(y).clip(25, 346)   # diabetes-like: whole numbers, ~200 distinct values
    assert infer_task(whole).kind == "regression"
    assert "--task classification" in infer_task(whole).reason
    # Float-typed whole numbers, each different (prices written as 1234.0): a measurement.
    assert infer_task(np.arange(1000.0, 1040.0)).kind == "regression"


def test_overrides_and_validation_labels():
    y = np.arange(40) % 3
    assert infer_task(y, task="regression").kind == "regression"
    task = infer_task(y, num_classes=5)
    assert task.classes == tuple(range(5)) and task.kind == "multiclass"
    # A class seen only in the validation labels is still a class; statistics stay training's.
    assert infer_task(y, np.array([3, 0]), label="y").classes == (0, 1, 2, 3)
    reg = infer_task(np.array([1.5, 2.5, 3.5]), np.array([100.0]), task="regression")
    assert reg.mean == pytest.approx(2.5)


@pytest.mark.parametrize("labels, kwargs, message", [
    (np.array([0, 1, np.nan, 2] * 5), {}, "missing in 5 of 20 examples"),
    (np.array(["a", "", "b"] * 5, dtype=object), {}, "missing in 5 of 15"),
    (np.full(30, 4), {}, "a single class (4 in all 30 examples)"),
    (np.full(30, 2.5), {}, "is constant (2.5 in all 30 examples)"),
    (np.full(30, 4), {"task": "regression"}, "is constant"),
    (np.arange(40), {}, "looks like an id"),
    (np.array([f"user{i}" for i in range(40)], dtype=object), {}, "looks like an id"),
    (np.arange(40) % 13, {"num_classes": 12}, "value 12 outside --num-classes 12"),
    (np.array(["a", "b", "c"] * 5, dtype=object), {"num_classes": 2},
     "--num-classes 2, but label 'y' names 3 classes"),
    (np.array(["a", "b"] * 5, dtype=object), {"task": "regression"},
     "a regression needs numbers"),
    (np.array([0.5, 1.25, 3.0] * 5), {"task": "classification"}, "fractional values"),
    (np.arange(10) % 2, {"task": "ranking"}, "expected classification or regression"),
    (np.arange(10) % 2, {"num_classes": 1}, "expected at least 2 classes"),
])
def test_labels_that_cannot_be_learned_are_one_line(labels, kwargs, message):
    with pytest.raises(TfprodError) as e:
        infer_task(labels, label="y", **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_encoder_maps_names_and_codes_and_decode_inverts_it():
    names = LabelTask("multiclass", "y", ("barbera", "barolo", "grignolino"))
    encode = names.encoder()
    got = encode(tf.constant(["barolo", "grignolino", "barbera"])).numpy()
    assert got.tolist() == [1, 2, 0]
    scores = np.eye(3)[[1, 2, 0]]
    assert names.decode(scores).tolist() == ["barolo", "grignolino", "barbera"]
    codes = LabelTask("binary", "y", (-1, 1))
    assert codes.encoder()(tf.constant([1, -1, 1])).numpy().ravel().tolist() == [1.0, 0.0, 1.0]
    assert codes.encoder(head_shape=False)(tf.constant([1, -1])).numpy().tolist() == [1, 0]
    assert codes.decode(np.array([[0.9], [0.2]])).tolist() == [1, -1]
    reg = LabelTask("regression", "y", mean=2.0, std=1.0)
    assert reg.encoder()(tf.constant([1.5, 2.5])).shape == (2, 1)


def test_macro_f1_equals_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, size=300)
    scores = rng.random((300, 5)) + 0.8 * np.eye(5)[y]
    metric = MacroF1(5)
    for i in range(0, 300, 64):  # batches accumulate
        metric.update_state(y[i:i + 64], scores[i:i + 64])
    want = f1_score(y, scores.argmax(1), average="macro")
    assert float(metric.result()) == pytest.approx(want, abs=1e-6)
    # A class that never occurs (in labels or predictions) does not count, as in sklearn.
    metric.reset_state()
    metric.update_state([0, 1, 1], np.eye(5)[[0, 1, 0]])
    assert float(metric.result()) == pytest.approx(f1_score([0, 1, 1], [0, 1, 0],
                                                            average="macro"), abs=1e-6)


def test_scaled_mse_is_unit_scale_whatever_the_units():
    loss = ScaledMeanSquaredError(scale=50.0)
    assert float(loss([[100.0]], [[150.0]])) == pytest.approx(1.0)
    assert float(ScaledMeanSquaredError(scale=0.5)([[1.0]], [[1.5]])) == pytest.approx(1.0)


@pytest.mark.parametrize("task", [
    LabelTask("multiclass", "kind", ("barbera", "barolo", "grignolino")),
    LabelTask("binary", "sick", (0, 1)),
    LabelTask("regression", "price", mean=150.0, std=75.0),
])
def test_preset_heads_save_and_load_with_their_task(task, tmp_path):
    keras.utils.set_random_seed(0)
    model = mlp((4,), task=task, hidden=(8,))
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    before = model.predict(x, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), before, rtol=1e-6)
    assert find_task(loaded) == task
    assert isinstance(loaded.layers[-1], Target)
    assert loaded.output_shape == (None, task.units)
    if task.kind == "regression":
        # A fresh head answers around the training mean, in the label's units.
        assert abs(float(before.mean()) - 150.0) < 75.0
