"""tfprod.export: TF Serving layout, named signatures, warmup, reference statistics, atomic
publish, .keras / weights files, and the bad input of each."""

import os
import signal
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfprod.errors import TfprodError
from tfprod.export import (
    export_saved_model,
    list_versions,
    load_keras,
    load_reference_stats,
    next_version,
    read_warmup_requests,
    save_keras,
    save_weights,
)
from tfprod.export.publish import TEMP_PREFIX

VERSION_FILES = ("saved_model.pb", "variables/variables.index", "assets.extra/"
                 "tf_serving_warmup_requests", "assets.extra/tfprod/reference_stats.json")


def _entries(base):
    return sorted(os.listdir(base)) if os.path.isdir(base) else []


def _mean_pixel():
    spec = tf.TensorSpec([None, 32, 32, 1], tf.float32, name="image")
    return tf.function(lambda image: {"mean_pixel": tf.reduce_mean(image, axis=[1, 2, 3])},
                       input_signature=[spec])


@pytest.fixture(scope="module")
def exported(digits_cnn, tmp_path_factory):
    """The digits CNN exported once, with reference data, top-3 classes and extra endpoints."""
    base = tmp_path_factory.mktemp("export") / "digits"
    model = digits_cnn.model
    hidden = keras.Model(model.input, model.layers[-2].output)
    result = export_saved_model(
        model, base, reference_data=(digits_cnn.x_train, digits_cnn.y_train), top_k=3,
        extra_endpoints={"mean_pixel": _mean_pixel(), "features": hidden})
    return result, tf.saved_model.load(result.path)


@pytest.fixture(scope="module")
def keras_probs(digits_cnn):
    return digits_cnn.model.predict(digits_cnn.x_test.astype(np.float32), verbose=0)


def test_public_surface():
    import tfprod.export as ex

    assert not [n for n in ex.__all__ if not hasattr(ex, n)]
    assert not hasattr(ex, "litert") or "litert" not in ex.__all__


# ------------------------------------------------------------------------- layout, signature


def test_version_folder_has_tf_serving_layout(exported):
    result, _ = exported
    assert result.version == 1 and result.path == os.path.join(result.base_path, "1")
    assert _entries(result.base_path) == ["1"]  # no staging folder left
    for f in VERSION_FILES:
        assert os.path.isfile(os.path.join(result.path, f)), f
    assert os.path.isdir(os.path.join(result.path, "assets"))
    assert result.size_bytes > 0 and result.warmup_requests == 4


def test_serving_default_names_inputs_and_outputs_after_the_model(exported):
    result, loaded = exported
    want = {"inputs": {"image": {"dtype": "float32", "shape": [None, 32, 32, 1]}},
            "outputs": {"probabilities": {"dtype": "float32", "shape": [None, 10]}}}
    assert result.signature == want
    assert loaded.signatures["serving_default"].structured_outputs.keys() == {"probabilities"}
    assert sorted(result.endpoints) == ["classes", "features", "mean_pixel", "serving_default"]
    assert result.endpoints["classes"]["outputs"] == {
        "classes": {"dtype": "int64", "shape": [None, 3]},
        "scores": {"dtype": "float32", "shape": [None, 3]}}


def test_saved_model_gives_keras_predictions_on_raw_pixels(exported, digits_cnn, keras_probs):
    # Raw 0..255 pixels in: the Rescaling layer is inside the exported graph.
    _, loaded = exported
    x = tf.constant(digits_cnn.x_test.astype(np.float32))
    served = loaded.signatures["serving_default"](image=x)["probabilities"].numpy()
    np.testing.assert_allclose(served, keras_probs, rtol=1e-5, atol=1e-6)
    accuracy = float(np.mean(served.argmax(1) == digits_cnn.y_test))
    assert accuracy == pytest.approx(digits_cnn.accuracy, abs=1e-6)


def test_extra_endpoints(exported, digits_cnn, keras_probs):
    _, loaded = exported
    x = digits_cnn.x_test[:50].astype(np.float32)
    top = loaded.signatures["classes"](image=tf.constant(x))
    np.testing.assert_array_equal(top["classes"].numpy(),
                                  np.argsort(-keras_probs[:50], axis=1, kind="stable")[:, :3])
    np.testing.assert_allclose(top["scores"].numpy(),
                               -np.sort(-keras_probs[:50], axis=1)[:, :3], rtol=1e-5)
    mean = loaded.signatures["mean_pixel"](image=tf.constant(x))["mean_pixel"].numpy()
    np.testing.assert_allclose(mean, x.mean(axis=(1, 2, 3)), rtol=1e-5)
    hidden = keras.Model(digits_cnn.model.input, digits_cnn.model.layers[-2].output)
    feats = loaded.signatures["features"](image=tf.constant(x))["features"].numpy()
    np.testing.assert_allclose(feats, hidden.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------- warmup


def test_warmup_records_parse_and_run_through_the_signature(exported, digits_cnn):
    from tensorflow_serving.apis import prediction_log_pb2

    result, loaded = exported
    records = list(tf.data.TFRecordDataset(result.files["warmup"]))
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in records]
    assert [log.WhichOneof("log_type") for log in logs] == ["predict_log"] * 4
    requests = read_warmup_requests(result.path)
    assert [r["inputs"]["image"].shape[0] for r in requests] == [1, 2, 4, 8]
    for log, request in zip(logs, requests, strict=True):
        spec = log.predict_log.request.model_spec
        assert (spec.name, spec.signature_name) == ("digits", "serving_default")
        x = request["inputs"]["image"]
        assert x.dtype == np.float32 and x.shape[1:] == (32, 32, 1)
        out = loaded.signatures["serving_default"](image=tf.constant(x))["probabilities"]
        np.testing.assert_allclose(out.numpy(), digits_cnn.model.predict(x, verbose=0),
                                   rtol=1e-5, atol=1e-6)
    # Real examples, in the order the data gave them.
    np.testing.assert_array_equal(requests[1]["inputs"]["image"], digits_cnn.x_train[1:3])


def test_sequential_and_multi_output_models_keep_their_names(tmp_path):
    seq = keras.Sequential([keras.Input((3,), name="features"),
                            keras.layers.Dense(2, name="logits")])
    assert export_saved_model(seq, tmp_path / "s").signature == {
        "inputs": {"features": {"dtype": "float32", "shape": [None, 3]}},
        "outputs": {"logits": {"dtype": "float32", "shape": [None, 2]}}}
    a, b = keras.Input((2,), name="a"), keras.Input((1,), name="b")
    both = keras.layers.Concatenate()([a, b])
    model = keras.Model({"a": a, "b": b}, {"total": keras.layers.Dense(1, name="t")(both),
                                           "parts": keras.layers.Dense(3, name="p")(both)})
    x = {"a": np.ones((5, 2), np.float32), "b": np.zeros((5, 1), np.float32)}
    result = export_saved_model(model, tmp_path / "d", reference_data=x, warmup=1)
    assert sorted(result.signature["inputs"]) == ["a", "b"]
    assert sorted(result.signature["outputs"]) == ["parts", "total"]


# ------------------------------------------------------------------------- reference stats


def test_reference_statistics_of_images_and_predictions(exported, digits_cnn):
    result, _ = exported
    stats = load_reference_stats(result.path)
    x, y = digits_cnn.x_train, digits_cnn.y_train
    assert stats["format"] == "tfprod.reference_stats/1" and stats["num_examples"] == len(x)
    image = stats["features"]["image"]
    assert image["kind"] == "image" and image["shape"] == [32, 32, 1]
    assert image["count"] == x.size and image["missing"] == 0
    assert image["mean"] == pytest.approx(float(x.mean()), rel=1e-9)
    assert image["std"] == pytest.approx(float(x.std()), rel=1e-9)
    assert (image["min"], image["max"]) == (float(x.min()), float(x.max()))
    assert image["quantiles"]["values"][3] == float(np.median(x))
    assert sum(image["histogram"]["counts"]) == x.size
    assert len(image["histogram"]["edges"]) == len(image["histogram"]["counts"]) + 1 == 21
    assert image["channels"][0]["mean"] == pytest.approx(float(x.mean()), rel=1e-9)
    probs = digits_cnn.model.predict(x.astype(np.float32), verbose=0)
    classes = stats["predictions"]["probabilities"]["classes"]
    assert classes["counts"] == np.bincount(probs.argmax(1), minlength=10).tolist()
    assert stats["labels"]["classes"]["counts"] == np.bincount(y).tolist()


def test_load_reference_stats_without_them(tmp_path):
    with pytest.raises(TfprodError, match="no reference statistics"):
        load_reference_stats(tmp_path)


# ---------------------------------------------------------------------------- tabular model


@pytest.fixture(scope="module")
def tabular(tmp_path_factory):
    from tfprod.data import preprocessing, read_csv

    rng = np.random.default_rng(0)
    n = 300
    color = rng.choice(["red", "green", "blue"], n)
    size = rng.normal(5, 2, n).round(3)
    count = rng.integers(0, 20, n)
    label = ((size > 5) ^ (color == "red")).astype(int)
    path = tmp_path_factory.mktemp("tabular") / "train.csv"
    rows = [f"{c},{s},{k},{y}" for c, s, k, y in zip(color, size, count, label, strict=True)]
    path.write_text("color,size,count,label\n" + "\n".join(rows) + "\n")
    prep = preprocessing(str(path), label="label")
    x = keras.layers.Dense(8, activation="relu")(prep.encoded)
    out = keras.layers.Dense(1, activation="sigmoid", name="score")(x)
    model = keras.Model(prep.inputs, out)
    model.compile("adam", "binary_crossentropy")
    model.fit(read_csv(str(path), label="label", batch_size=32, seed=0), epochs=2, verbose=0)
    data = read_csv(str(path), label="label", batch_size=64, shuffle=False)
    return model, data, (color, size, count)


def test_tabular_model_serves_raw_columns(tabular, tmp_path):
    model, data, (color, size, count) = tabular
    result = export_saved_model(model, tmp_path / "tab", reference_data=data, warmup=2)
    assert result.signature["inputs"] == {
        "color": {"dtype": "string", "shape": [None, 1]},
        "count": {"dtype": "int64", "shape": [None, 1]},
        "size": {"dtype": "float32", "shape": [None, 1]}}
    assert list(result.signature["outputs"]) == ["score"]
    raw = {"color": np.array([["red"], ["blue"], ["purple"]], dtype=object),
           "size": np.array([[7.5], [2.0], [5.0]], np.float32),
           "count": np.array([[3], [19], [40]], np.int64)}
    tensors = {k: tf.constant(v) for k, v in raw.items()}
    served = tf.saved_model.load(result.path).signatures["serving_default"](**tensors)
    # model.predict refuses numpy object arrays in Keras 3.15 ("Invalid dtype: object").
    want = model(tensors, training=False).numpy()
    np.testing.assert_allclose(served["score"].numpy(), want, rtol=1e-5, atol=1e-6)
    stats = load_reference_stats(result.path)
    assert stats["num_examples"] == 300
    top = dict(map(tuple, stats["features"]["color"]["top"]))
    assert top == {c: int((color == c).sum()) for c in ("red", "green", "blue")}
    assert stats["features"]["size"]["mean"] == pytest.approx(size.mean(), rel=1e-6)
    assert stats["features"]["count"]["max"] == count.max()
    requests = read_warmup_requests(result.path)
    assert requests[0]["inputs"]["color"].tolist() == [[color[0].encode()]]


# --------------------------------------------------------------------------- atomic publish


def test_versions_are_numbered_folders(tmp_path):
    assert list_versions(tmp_path / "missing") == [] and next_version(tmp_path / "m") == 1
    for name in ("1", "3", f"{TEMP_PREFIX}x", "10"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert list_versions(tmp_path) == [1, 3, 10] and next_version(tmp_path) == 11


_KILLED_EXPORT = """
import os, signal, sys
import keras, numpy as np
from tfprod.export import export_saved_model

def progress(stage):
    if stage.startswith("loading it back"):
        print(sorted(os.listdir(sys.argv[2])), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

export_saved_model(keras.saving.load_model(sys.argv[1]), sys.argv[2],
                   reference_data=np.load(sys.argv[3]), progress=progress)
"""


def test_export_killed_mid_way_publishes_nothing(digits_cnn, exported, tmp_path):
    import shutil

    base = tmp_path / "digits"
    shutil.copytree(exported[0].path, base / "1")
    np.save(tmp_path / "x.npy", digits_cnn.x_train[:32])
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_EXPORT, digits_cnn.keras_path, str(base),
         str(tmp_path / "x.npy")], capture_output=True, text=True, timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    staging = [e for e in _entries(base) if e.startswith(TEMP_PREFIX)]
    assert len(staging) == 1 and staging[0] in proc.stdout  # killed with its version written
    assert os.path.isfile(base / staging[0] / "saved_model.pb")
    assert list_versions(base) == [1]
    result = export_saved_model(digits_cnn.model, base)
    assert result.version == 2 and _entries(base) == ["1", "2"]  # the dead export's folder gone


def test_exception_mid_export_leaves_nothing(digits_cnn, tmp_path):
    def fail(stage):
        if stage == "publishing":
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        export_saved_model(digits_cnn.model, tmp_path / "m",
                           reference_data=digits_cnn.x_train[:16], progress=fail)
    assert _entries(tmp_path / "m") == []
    assert export_saved_model(digits_cnn.model, tmp_path / "m").version == 1


def test_reader_never_sees_a_half_written_version(digits_cnn, tmp_path):
    base = tmp_path / "m"
    bad, seen, stop = [], set(), threading.Event()

    def watch():
        while not stop.is_set():
            for v in list_versions(base):
                seen.add(v)
                missing = [f for f in VERSION_FILES if not (base / str(v) / f).exists()]
                if missing:
                    bad.append((v, missing))
            time.sleep(0.0005)

    reader = threading.Thread(target=watch)
    reader.start()
    try:
        export_saved_model(digits_cnn.model, base, reference_data=digits_cnn.x_train[:16])
        time.sleep(0.01)
    finally:
        stop.set()
        reader.join()
    assert not bad and seen == {1} and list_versions(base) == [1]


def test_existing_version_is_refused_then_swapped_atomically(digits_cnn, exported, tmp_path):
    import shutil

    base = tmp_path / "m"
    shutil.copytree(exported[0].path, base / "1")
    before = (base / "1" / "saved_model.pb").read_bytes()
    changed = digits_cnn.fresh()
    layer = changed.get_layer("probabilities")
    layer.set_weights([w * 0.5 for w in layer.get_weights()])
    with pytest.raises(TfprodError, match=r"version 1 already exists .*\(--overwrite\)"):
        export_saved_model(changed, base, version=1)
    assert (base / "1" / "saved_model.pb").read_bytes() == before and _entries(base) == ["1"]
    result = export_saved_model(changed, base, version=1, overwrite=True)
    assert result.version == 1 and _entries(base) == ["1"]
    x = digits_cnn.x_test[:20].astype(np.float32)
    served = tf.saved_model.load(str(base / "1")).signatures["serving_default"](
        image=tf.constant(x))["probabilities"].numpy()
    np.testing.assert_allclose(served, changed.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(served, digits_cnn.model.predict(x, verbose=0), atol=1e-3)


# -------------------------------------------------------------------------------- bad input


def test_reference_data_of_the_wrong_shape_is_refused(digits_cnn, tmp_path):
    wrong = np.zeros((8, 28, 28, 1), np.uint8)
    with pytest.raises(TfprodError) as e:
        export_saved_model(digits_cnn.model, tmp_path / "m", reference_data=wrong)
    assert "'image' has shape (28, 28, 1)" in str(e.value) and "(32, 32, 1)" in str(e.value)
    text = np.array([["a"]] * 4, dtype=object)
    with pytest.raises(TfprodError, match="holds strings"):
        export_saved_model(digits_cnn.model, tmp_path / "m",
                           reference_data=tf.data.Dataset.from_tensor_slices(
                               np.broadcast_to(text[:, :, None, None], (4, 32, 32, 1))).batch(2))
    assert _entries(tmp_path / "m") == []


def test_model_without_a_batch_dimension_is_refused(tmp_path):
    inputs = keras.Input(shape=(4,), batch_size=1, name="x")
    model = keras.Model(inputs, keras.layers.Dense(2, name="y")(inputs))
    with pytest.raises(TfprodError, match=r"'x' has shape \(1, 4\): the batch dimension is "
                                          r"fixed at 1.*keras.Input\(shape=\(4,\)\)"):
        export_saved_model(model, tmp_path / "m")
    fixed = tf.function(lambda image: {"n": tf.shape(image)[0]},
                        input_signature=[tf.TensorSpec([8, 32, 32, 1], name="image")])
    free = keras.Input((2,), name="x")
    model = keras.Model(free, keras.layers.Dense(1, name="y")(free))
    with pytest.raises(TfprodError, match="'image' has shape .*fixed at 8"):
        export_saved_model(model, tmp_path / "m", extra_endpoints={"fixed": fixed})
    assert _entries(tmp_path / "m") == []


def test_base_path_with_a_foreign_folder_is_refused(digits_cnn, tmp_path):
    (tmp_path / "m" / "backup").mkdir(parents=True)
    with pytest.raises(TfprodError) as e:
        export_saved_model(digits_cnn.model, tmp_path / "m")
    assert "'backup'" in str(e.value) and "\n" not in str(e.value)
    assert _entries(tmp_path / "m") == ["backup"]
    (tmp_path / "f").write_text("x")
    with pytest.raises(TfprodError, match="is a file"):
        export_saved_model(digits_cnn.model, tmp_path / "f")


def test_bad_arguments(digits_cnn, tmp_path):
    for kwargs, match in (({"version": -1}, "non-negative"), ({"warmup": 5000}, "1000"),
                          ({"top_k": 0}, "positive"),
                          ({"extra_endpoints": {"serving_default": len}}, "identifier")):
        with pytest.raises(TfprodError, match=match):
            export_saved_model(digits_cnn.model, tmp_path / "m", **kwargs)
    assert _entries(tmp_path / "m") == []


# ------------------------------------------------------------------------ .keras and weights


def test_keras_file_resumes_training_where_it_stopped(digits_cnn, tmp_path):
    model = digits_cnn.fresh()
    x, y = digits_cnn.x_train[:64], digits_cnn.y_train[:64]
    model.train_on_batch(x, y)
    path = save_keras(model, tmp_path / "model.keras")
    again = load_keras(path)
    assert int(again.optimizer.iterations) == int(model.optimizer.iterations) > 0
    saved = {v.path: v.numpy() for v in model.optimizer.variables}
    restored = {v.path: v.numpy() for v in again.optimizer.variables}
    assert saved.keys() == restored.keys() and any("momentum" in k for k in saved)
    for k in saved:
        np.testing.assert_array_equal(restored[k], saved[k], err_msg=k)
    # Dropout's RNG state is not in a .keras file (weights and optimizer variables are): give
    # both the same dropout mask, so one more step must give the same weights.
    for layer in model.layers:
        if hasattr(layer, "seed_generator"):
            again.get_layer(layer.name).seed_generator.state.assign(layer.seed_generator.state)
    model.train_on_batch(x, y)
    again.train_on_batch(x, y)
    for a, b in zip(model.weights, again.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.path)


def test_weights_file_round_trip_and_bad_paths(digits_cnn, tmp_path):
    path = save_weights(digits_cnn.model, tmp_path / "w.weights.h5")
    other = digits_cnn.fresh()
    other.get_layer("probabilities").set_weights(
        [np.zeros_like(w) for w in other.get_layer("probabilities").get_weights()])
    other.load_weights(path)
    for a, b in zip(other.weights, digits_cnn.model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(TfprodError, match=r"must end in \.weights\.h5"):
        save_weights(digits_cnn.model, tmp_path / "w.h5")
    with pytest.raises(TfprodError, match=r"must end in \.keras"):
        save_keras(digits_cnn.model, tmp_path / "model.h5")
    with pytest.raises(TfprodError, match="already exists"):
        save_weights(digits_cnn.model, path)
    with pytest.raises(TfprodError, match="no such file"):
        load_keras(tmp_path / "missing.keras")
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(TfprodError, match="cannot load it as a Keras model"):
        load_keras(tmp_path / "broken.keras")
    assert sorted(os.listdir(tmp_path)) == ["broken.keras", "w.weights.h5"]


def test_unsaveable_model_leaves_no_file(tmp_path):
    class Opaque(keras.layers.Layer):  # get_config holds an object JSON cannot carry
        def __init__(self, thing=None, **kwargs):
            super().__init__(**kwargs)
            self.thing = thing

        def call(self, x):
            return x

        def get_config(self):
            return {**super().get_config(), "thing": self.thing}

    inputs = keras.Input((2,))
    model = keras.Model(inputs, Opaque(thing=threading.Lock())(inputs))
    with pytest.raises(TfprodError, match="cannot save the model"):
        save_keras(model, tmp_path / "m.keras")
    assert os.listdir(tmp_path) == []


class _EagerOnlyOffset(keras.layers.Layer):
    """Adds 1 when run eagerly and 0 when traced: Python-side behaviour a SavedModel loses."""

    def call(self, x):
        return x + (1.0 if tf.executing_eagerly() else 0.0)


def test_a_model_that_behaves_differently_traced_is_refused_and_nothing_is_published(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, _EagerOnlyOffset(name="scores")(keras.layers.Dense(2)(inputs)))
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    base = tmp_path / "models" / "m"
    with pytest.raises(TfprodError, match=r"disagrees with the Keras model on output .*"
                                          r"max difference 1\.0.*behaves differently when "
                                          r"traced"):
        export_saved_model(model, base, reference_data=x)
    assert _entries(base) == []  # no version, no staging folder left behind
