"""`tfprod train` on the user's own tables: the task read from the labels, a held-out score,
the best epoch kept, and an export that answers in the user's terms."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from tables import NAMES
from tfprod.data import read_csv, read_tfrecords
from tfprod.errors import TfprodError
from tfprod.export import export_saved_model, load_keras
from tfprod.train.run import TrainConfig, run_training

EPOCHS = 4
CASES = {  # table -> (task kind, classes, threshold of the held-out check)
    "cancer": ("binary", (0, 1), 0.85),
    "digits12": ("multiclass", tuple(range(12)), 0.7),
    "wine_names": ("multiclass", ("barbera", "barolo", "grignolino"), 0.8),
    "diabetes": ("regression", None, None),
}


def _train(path, out, **kwargs):
    config = dict(model="mlp", data=path, epochs=EPOCHS, batch_size=32, learning_rate=3e-3,
                  logdir=str(out / "logs"), save=str(out / "model.keras"))
    config.update(kwargs)
    return run_training(TrainConfig(**config))


def _validation_rows(path, fmt):
    """The held-out side as the split draws it: raw features (by input name) and labels."""
    read = read_csv if fmt == "csv" else read_tfrecords
    ds = read(path, label="label", batch_size=1024, shuffle=False, validation_split=0.2,
              subset="validation")
    xs, ys = zip(*[(x, y) for x, y in ds.as_numpy_iterator()], strict=True)
    x = {k: np.concatenate([b[k] for b in xs]) for k in xs[0]}
    return x, np.concatenate(ys)


ALL = [(t, f) for t in CASES for f in ("csv", "tfrecord")]


@pytest.fixture(scope="module")
def trained(own_tables, tmp_path_factory):
    """trained(table, fmt): the model trained on that table (once per module) and its export."""
    done = {}

    def get(table, fmt):
        if (table, fmt) not in done:
            out = tmp_path_factory.mktemp(f"{table}-{fmt}")
            result = _train(own_tables[table][fmt], out)
            exported = export_saved_model(load_keras(result.saved), out / "models" / table)
            done[table, fmt] = result, exported, own_tables[table][fmt]
        return done[table, fmt]

    return get


@pytest.mark.parametrize(("table", "fmt"), ALL, ids=[f"{t}-{f}" for t, f in ALL])
def test_task_metrics_and_export_fit_the_labels(trained, table, fmt):
    result, exported, path = trained(table, fmt)
    kind, classes, threshold = CASES[table]
    task = result.label_task
    assert task["kind"] == kind and task["label"] == "label"
    assert task["classes"] == (None if classes is None else list(classes))
    metrics = {"binary": ("accuracy", "auc"), "multiclass": ("accuracy", "macro_f1"),
               "regression": ("mae", "rmse")}[kind]
    for name in ("loss", *metrics):
        assert len(result.history[f"val_{name}"]) == len(result.epochs) == EPOCHS
    assert result.history["loss"][-1] < result.history["loss"][0]
    best = int(np.argmin(result.history["val_loss"])) + 1
    assert result.best_epoch == best

    x, y = _validation_rows(path, fmt)
    assert len(y) == result.split["held_out"]["rows"]
    loaded = tf.saved_model.load(exported.path)
    serve = loaded.signatures["serving_default"]
    specs = serve.structured_input_signature[1]
    feed = {k: tf.constant(v.reshape(len(v), *[d for d in specs[k].shape[1:]]).astype(
        specs[k].dtype.as_numpy_dtype)) for k, v in x.items()}
    out = {k: v.numpy() for k, v in serve(**feed).items()}
    if kind == "regression":
        assert set(out) == {"value"} and out["value"].shape == (len(y), 1)
        value = out["value"][:, 0]
        # In the label's units: centred on the targets and closer than their mean is.
        assert abs(value.mean() - y.mean()) < 0.25 * y.std()
        assert np.sqrt(np.mean((value - y) ** 2)) < 0.9 * y.std()
        return
    scores = out["probability" if kind == "binary" else "probabilities"]
    assert scores.shape == (len(y), 1 if kind == "binary" else len(classes))
    predicted = out["classes"]
    if table == "wine_names":
        predicted = predicted.astype(str)
        assert set(predicted) <= set(NAMES)
        y = y.astype(str)
        want = np.array(classes)[scores.argmax(1)]
    elif kind == "binary":
        want = (scores[:, 0] >= 0.5).astype(np.int64)
    else:
        want = scores.argmax(1)
    np.testing.assert_array_equal(predicted, want)
    assert np.mean(predicted == y) >= threshold


def test_tensorboard_has_the_validation_metrics_per_epoch(trained):
    result, _, _ = trained("wine_names", "csv")
    tags: dict[str, int] = {}
    root = os.path.join(os.path.dirname(result.saved), "logs", "validation")
    for f in glob.glob(os.path.join(root, "events.out.*")):
        for event in tf.compat.v1.train.summary_iterator(f):
            for v in event.summary.value:
                tags[v.tag] = tags.get(v.tag, 0) + 1
    for tag in ("epoch_loss", "epoch_accuracy", "epoch_macro_f1"):
        assert tags.get(tag) == EPOCHS, (tag, tags)


def test_early_stopping_keeps_the_best_epoch(own_tables, tmp_path):
    # A high learning rate overfits the small diabetes table within a few epochs.
    path = own_tables["diabetes"]["csv"]
    result = _train(path, tmp_path, epochs=40, learning_rate=0.03, early_stopping=2)
    val = result.history["val_loss"]
    assert result.stopped_early and len(val) < 40
    best = int(np.argmin(val))
    assert result.best_epoch == best + 1 and val[-1] > val[best]
    assert len(val) == best + 1 + 2  # stopped after two epochs without improvement
    # The saved model is the best epoch's: Keras' own evaluate on the same held-out rows gives
    # that epoch's validation loss, not the last one's.
    model = load_keras(result.saved)
    ds = read_csv(path, label="label", batch_size=64, shuffle=False, validation_split=0.2,
                  subset="validation").map(lambda x, y: (x, tf.reshape(tf.cast(y, tf.float32),
                                                                       [-1, 1])))
    loss = model.evaluate(ds, verbose=0, return_dict=True)["loss"]
    assert loss == pytest.approx(val[best], rel=1e-4)
    assert abs(loss - val[-1]) > 1e-3


def test_validation_file_instead_of_a_split(tmp_path):
    from tables import tables, write_csv
    from tfprod.train import training_inputs

    x, y = tables()["wine"]
    order = np.random.default_rng(1).permutation(len(y))
    train = write_csv(tmp_path / "train.csv", x[order[:140]], y[order[:140]])
    val = write_csv(tmp_path / "val.csv", x[order[140:]], y[order[140:]])
    inputs = training_inputs(train, validation=val)
    assert inputs.split["validation"] == f"--validation {val}"
    assert inputs.split["training"]["rows"] == 140 and inputs.split["held_out"]["rows"] == 38
    labels = np.concatenate([b[1] for b in inputs.batches(
        "validation", inputs.task.encoder).as_numpy_iterator()])
    assert sorted(labels.tolist()) == sorted(y[order[140:]].tolist())


def _bad(tmp_path, text, **kwargs):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(TfprodError) as e:
        _train(str(path), tmp_path, epochs=1, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_labels_are_one_line_each(tmp_path):
    rows = "".join(f"{i * 0.1:.1f},{i % 3}\n" for i in range(40))
    assert "label 'label' is missing in 1 of 41" in _bad(
        tmp_path, "a,label\n" + rows + "9.9,\n", validation_split=0)
    assert "a single class (1 in all 40" in _bad(
        tmp_path, "a,label\n" + "".join(f"{i},1\n" for i in range(40)), validation_split=0)
    assert "is constant (2.5 in all 40" in _bad(
        tmp_path, "a,label\n" + "".join(f"{i},2.5\n" for i in range(40)), validation_split=0)
    assert "looks like an id" in _bad(
        tmp_path, "a,label\n" + "".join(f"{i % 2},{i}\n" for i in range(40)),
        validation_split=0)
    assert "outside --num-classes 2" in _bad(tmp_path, "a,label\n" + rows, num_classes=2)
    assert "--early-stopping watches the validation loss" in _bad(
        tmp_path, "a,label\n" + rows, validation_split=0, early_stopping=2)


def test_validation_file_with_other_columns_is_one_line(own_tables, tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("f0,f1,label\n1,2,0\n")
    message = _bad(tmp_path, "f0,f2,label\n1,2,0\n3,4,1\n", validation=str(other))
    assert message == (f"--validation {other} has other columns than --data {tmp_path}/t.csv: "
                       "it lacks ['f2'] and adds ['f1']; give both the same columns")


@pytest.mark.parametrize(("table", "fmt"), [("wine_names", "csv"), ("diabetes", "tfrecord")])
def test_doctor_and_optimize_take_the_trained_model_as_it_is(trained, table, fmt, tmp_path):
    """No label flag, no head or loss to describe: the model carries its task."""
    from tfprod.doctor import diagnose
    from tfprod.models import load_data
    from tfprod.optimize.compare import optimize

    result, _, path = trained(table, fmt)
    model = load_keras(result.saved)
    data = load_data(path, model=model)  # the label column is the model's own
    report = diagnose(model, data)
    assert not report.has_errors, report.to_markdown()
    sides = [load_data(path, model=model, batch_size=256, validation_split=0.2, subset=s)
             for s in ("training", "validation")]
    report = optimize(model, *sides, out_dir=tmp_path / "variants",
                      variants=("keras", "float32"), runs=5)
    metric = {"wine_names": "accuracy", "diabetes": "mae"}[table]
    assert report.metric == metric and report.test_examples == result.split["held_out"]["rows"]
    keras_variant, litert = report.results
    assert litert.metric == pytest.approx(keras_variant.metric, rel=1e-3)
    final = result.history[f"val_{metric}"][result.best_epoch - 1]
    assert keras_variant.metric == pytest.approx(final * (100 if metric == "accuracy" else 1),
                                                 rel=1e-3)


def test_validation_file_with_text_where_training_has_numbers(tmp_path):
    from tfprod.train import training_inputs

    train = tmp_path / "train.csv"
    train.write_text("a,label\n" + "".join(f"{i},{i % 2}\n" for i in range(20)))
    val = tmp_path / "val.csv"
    val.write_text("a,label\n" + "".join(f"x{i},{i % 2}\n" for i in range(30)))
    with pytest.raises(TfprodError, match="column 'a' holds text, in --data .* numbers"):
        training_inputs(str(train), validation=str(val))


def test_a_saved_model_trains_on_with_its_own_task(own_tables, tmp_path):
    first = _train(own_tables["wine_names"]["csv"], tmp_path, epochs=1)
    again = _train(own_tables["wine_names"]["csv"], tmp_path, epochs=1, model=first.saved,
                   save=str(tmp_path / "again.keras"))
    assert again.history["val_loss"][0] < first.history["val_loss"][0]
    with pytest.raises(TfprodError, match="it was trained for 3-class classification.*the data "
                                          "asks for regression"):
        _train(own_tables["diabetes"]["csv"], tmp_path, epochs=1, model=first.saved)
