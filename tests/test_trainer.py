"""Trainer: loss falls and replicas agree under each strategy; accumulation, clipping, mixed
precision, exact resume after SIGKILL, and the errors users hit."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfprod.errors import TfprodError
from tfprod.train import Trainer, equal_replica_weights, make_strategy

HERE = os.path.dirname(__file__)


def _data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    return x, y


def _dataset(batch=32, n=256):
    x, y = _data(n)
    return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(n, seed=1).batch(batch)


def _model(optimizer=None, seed=0, metrics=("accuracy",)):
    keras.utils.set_random_seed(seed)
    m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                          keras.layers.Dense(2)])
    m.compile(optimizer=optimizer or keras.optimizers.Adam(0.02),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=list(metrics))
    return m


def test_default_strategy_loss_falls_with_metrics_and_validation():
    trainer = Trainer(_model())
    h = trainer.fit(_dataset(), epochs=4, validation_data=_dataset(64))
    loss = h.history["loss"]
    assert loss[-1] < 0.6 * loss[0]
    assert h.history["accuracy"][-1] > 0.85
    assert set(h.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    # The metric matches an independent evaluation of the trained model.
    x, y = _data()
    acc = np.mean(np.argmax(trainer.model.predict(x, verbose=0), 1) == y)
    assert trainer.evaluate(_dataset(64))["accuracy"] == pytest.approx(acc, abs=1e-6)


def test_mirrored_two_replicas_train_and_stay_identical():
    strategy = make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    trainer = Trainer(_model, strategy=strategy)
    h = trainer.fit(_dataset(), epochs=4)
    assert h.history["loss"][-1] < 0.6 * h.history["loss"][0]
    assert equal_replica_weights(trainer.model)
    assert len(trainer.model.weights[0].value.values) == 2


def test_mirrored_strategies_one_after_another_with_other_models():
    """Regression: a second MirroredStrategy reused the first one's collective keys, so training
    a model of other shapes aborted every collective op in the process
    (tensorflow/tensorflow#62790)."""
    for width in (5, 11):
        strategy = make_strategy("mirrored")
        with strategy.scope():
            model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(width),
                                      keras.layers.Dense(1)])
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        x = np.arange(96, dtype="float32").reshape(32, 3) / 96
        Trainer(model, strategy=strategy).fit(
            tf.data.Dataset.from_tensor_slices((x, x.sum(1))).batch(8), epochs=1)
        assert equal_replica_weights(model)


def test_mirrored_matches_single_replica_update():
    """Loss scaled by the global batch: 2 replicas give the same SGD step as 1."""
    x, y = _data(64)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    single = Trainer(_model(keras.optimizers.SGD(0.5)))
    single.fit(ds, epochs=1)
    strategy = make_strategy("mirrored")
    mirrored = Trainer(lambda: _model(keras.optimizers.SGD(0.5)), strategy=strategy)
    mirrored.fit(ds, epochs=1)
    for a, b in zip(single.model.weights, mirrored.model.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


@pytest.mark.parametrize("mirrored", [False, True])
def test_accumulating_four_micro_batches_equals_one_big_batch(mirrored):
    x, y = _data(128)
    strategy = make_strategy("mirrored") if mirrored else None
    big = Trainer(lambda: _model(keras.optimizers.SGD(0.3)), strategy=strategy)
    big.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(128), epochs=1)
    acc = Trainer(lambda: _model(keras.optimizers.SGD(0.3)), strategy=strategy,
                  accumulation_steps=4)
    acc.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(32), epochs=1)
    assert int(acc.model.optimizer.iterations.numpy()) == 1
    for a, b in zip(big.model.weights, acc.model.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_clip_norm_clips_the_global_gradient():
    x, y = _data(64)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    model = _model(keras.optimizers.SGD(1.0))
    before = [v.numpy() for v in model.trainable_variables]
    with tf.GradientTape() as tape:
        loss = model.loss(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    norm = float(tf.linalg.global_norm(grads))
    Trainer(model, clip_norm=norm / 10).fit(ds, epochs=1)
    step = [b - v.numpy() for b, v in zip(before, model.trainable_variables, strict=True)]
    assert float(tf.linalg.global_norm(step)) == pytest.approx(norm / 10, rel=1e-4)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains(policy):
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        model = _model()
        assert model.layers[0].compute_dtype == policy.split("_")[1]
        h = Trainer(model).fit(_dataset(), epochs=3)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert np.isfinite(h.history["loss"]).all()
    assert h.history["loss"][-1] < h.history["loss"][0]
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_same_callbacks_work_with_fit_and_trainer():
    class Record(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.events = []

        def on_epoch_end(self, epoch, logs=None):
            self.events.append((epoch, sorted(logs)))

    for run in ("fit", "trainer"):
        rec, stop = Record(), keras.callbacks.EarlyStopping("loss", patience=0, min_delta=10)
        model = _model()
        if run == "fit":
            model.fit(_dataset(), epochs=5, callbacks=[rec, stop], verbose=0)
        else:
            Trainer(model).fit(_dataset(), epochs=5, callbacks=[rec, stop])
        # EarlyStopping with an impossible min_delta stops after its patience in both.
        assert [e for e, _ in rec.events] == [0, 1]
        assert rec.events[0][1] == ["accuracy", "loss"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_ends_with_the_same_weights(tmp_path):
    script = os.path.join(HERE, "scripts", "resume_run.py")

    def run(ckpt, kill_at, resume, out):
        return subprocess.run([sys.executable, script, str(ckpt), str(kill_at), resume,
                               str(out)], capture_output=True, text=True, timeout=240)

    full = run(tmp_path / "a", 0, "0", tmp_path / "full.npz")
    assert full.returncode == 0, full.stderr[-2000:]
    killed = run(tmp_path / "b", 13, "0", tmp_path / "never.npz")  # epoch 2 of 3, step 5 of 8
    assert killed.returncode == -9
    assert not (tmp_path / "never.npz").exists()
    resumed = run(tmp_path / "b", 0, "1", tmp_path / "resumed.npz")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = np.load(tmp_path / "full.npz"), np.load(tmp_path / "resumed.npz")
    assert int(a["iterations"]) == int(b["iterations"]) == 24
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    Trainer(_model(), checkpoint_dir=tmp_path).fit(_dataset(), epochs=1)
    other = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(2)])
    other.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(TfprodError, match="does not fit this model.*another architecture"):
        Trainer(other, checkpoint_dir=tmp_path).fit(_dataset(), epochs=2, resume=True)


# ------------------------------------------------------------------------------------ bad input


def test_model_without_loss_is_refused():
    m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    with pytest.raises(TfprodError, match="not compiled with a loss"):
        Trainer(m)


def test_labels_that_do_not_fit_the_output_are_named():
    x, _ = _data(64)
    y = np.zeros((64, 5), "float32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    with pytest.raises(TfprodError, match=r"labels of shape \(5,\) per example do not fit the "
                       r"model's output \(2,\)"):
        Trainer(_model()).fit(ds, epochs=1)


def test_dataset_must_yield_pairs():
    x, _ = _data(64)
    with pytest.raises(TfprodError, match=r"expected \(x, y\)"):
        Trainer(_model()).fit(tf.data.Dataset.from_tensor_slices(x).batch(8))
    with pytest.raises(TfprodError, match="expected a tf.data.Dataset"):
        Trainer(_model()).fit(x)


def test_accumulation_needs_a_divisible_batch():
    with pytest.raises(TfprodError, match="divisible by 3"):
        Trainer(_model(), accumulation_steps=3).fit(_dataset(32), epochs=1)


def test_bad_tf_config_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(TfprodError, match="TF_CONFIG is not valid JSON"):
        make_strategy("multi-worker")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["h:1"]}, "task": {"type": "ps"}}')
    with pytest.raises(TfprodError, match="does not name a job of the cluster"):
        make_strategy("auto")
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(TfprodError, match="needs TF_CONFIG"):
        make_strategy("ps")
    with pytest.raises(TfprodError, match="strategy 'tpu'"):
        make_strategy("tpu")


def test_evaluate_is_the_mean_over_examples_as_keras_evaluate():
    # Regression: the mean of per-batch means gave a short last batch the weight of a full one.
    x, y = _data(100)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)  # 32, 32, 32 and 4 examples
    model = _model()
    trainer = Trainer(model)
    trainer.fit(ds, epochs=1)
    got = trainer.evaluate(ds)
    want = model.evaluate(ds, verbose=0, return_dict=True)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-6)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_mirrored_clip_norm_clips_the_all_reduced_gradient_like_one_replica(policy):
    """Two replicas + clip_norm == one replica + clip_norm: the gradient is all-reduced, then
    clipped (Keras' own global_clipnorm clips each replica's part); under mixed_float16 the
    limit follows the loss scale, so the unscaled step still has norm clip_norm."""
    x, y = _data(64)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    probe = _model()
    with tf.GradientTape() as tape:
        loss = probe.loss(y, probe(x, training=True))
    limit = float(tf.linalg.global_norm(tape.gradient(loss, probe.trainable_variables))) / 10
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        single = Trainer(_model(keras.optimizers.SGD(1.0)), clip_norm=limit)
        before = [v.numpy() for v in single.model.trainable_variables]
        single.fit(ds, epochs=1)
        mirrored = Trainer(lambda: _model(keras.optimizers.SGD(1.0)),
                           strategy=make_strategy("mirrored"), clip_norm=limit)
        mirrored.fit(ds, epochs=1)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    if policy == "mixed_float16":
        assert isinstance(mirrored.model.optimizer, keras.optimizers.LossScaleOptimizer)
    tolerance = 1e-6 if policy == "float32" else 2e-3
    step = [b - v.numpy() for b, v in zip(before, single.model.trainable_variables, strict=True)]
    assert float(tf.linalg.global_norm(step)) == pytest.approx(limit, rel=tolerance * 10)
    for a, b in zip(single.model.weights, mirrored.model.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=tolerance)
    assert equal_replica_weights(mirrored.model)


def test_split_cpu_makes_logical_devices_and_refuses_a_late_change():
    """In a fresh process (this one split its CPU before anything ran, in conftest.py)."""
    code = (
        "from tfprod.train.strategies import split_cpu\n"
        "from tfprod.errors import TfprodError\n"
        "print(split_cpu(3))\n"
        "print(split_cpu(3))\n"  # the same number again: harmless
        "import tensorflow as tf; tf.constant(1.0) + 1\n"
        "try:\n"
        "    split_cpu(2)\n"
        "except TfprodError as e:\n"
        "    print('error:', e)\n"
        "try:\n"
        "    split_cpu(0)\n"
        "except TfprodError as e:\n"
        "    print('error:', e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-2000:]
    devices = [f"/device:CPU:{i}" for i in range(3)]
    assert done.stdout.splitlines() == [
        str(devices), str(devices),
        "error: cannot split the CPU into 2 devices: TensorFlow already initialized 3; choose "
        "the strategy before building any model",
        "error: num_devices=0; expected a positive integer"]


def test_resume_draws_the_same_dropout_masks_as_an_uninterrupted_run(tmp_path):
    """The checkpoint carries the Dropout layers' generator state: epoch 1, then a resumed
    epoch 2, ends on the weights of two epochs in one run."""
    def run(epochs, ckpt, resume):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dropout(0.5), keras.layers.Dense(2)])
        model.compile(optimizer=keras.optimizers.Adam(0.01),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        Trainer(model, checkpoint_dir=ckpt).fit(_dataset(), epochs=epochs, resume=resume)
        return model.get_weights()

    run(1, str(tmp_path / "a"), False)
    resumed = run(2, str(tmp_path / "a"), True)
    straight = run(2, str(tmp_path / "b"), False)
    for a, b in zip(resumed, straight, strict=True):
        np.testing.assert_array_equal(a, b)


def _nodes(graph_def):
    """Every node of a graph and of the functions in its library."""
    yield from graph_def.node
    for fn in graph_def.library.function:
        yield from fn.node_def


def test_accumulation_runs_one_micro_batch_at_a_time():
    """The micro-batch loop is a while loop with parallel_iterations=1: TF would otherwise run
    up to 10 iterations at once and hold their activations together, which is the memory
    accumulation exists to save."""
    x, y = _data(128)
    trainer = Trainer(lambda: _model(keras.optimizers.SGD(0.3)), accumulation_steps=4)
    trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(32), epochs=1)
    (step,) = trainer._train_step._list_all_concrete_functions()
    loops = [n for n in _nodes(step.graph.as_graph_def()) if n.op in ("While", "StatelessWhile")]
    assert loops and {n.attr["parallel_iterations"].i for n in loops} == {1}
