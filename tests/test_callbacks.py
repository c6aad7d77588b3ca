"""Training insight callbacks, with ``model.fit`` and with a bare loop that calls the hooks."""

import glob
import os
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfprod.errors import TfprodError
from tfprod.train.callbacks import GradientStats, LearningRateLogger, LossStagnation, RollbackOnNaN


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32)).astype("float32")
    return x, y


def _dense_model(optimizer="sgd", *, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu"),
                              keras.layers.Dense(1)])
    if optimizer is not None:
        model.compile(optimizer=optimizer, loss="mse")
    return model


def run_loop(model, callbacks, batches, *, epochs, optimizer=None, loss="mse", after_step=None):
    """Drives callbacks the way tfprod's Trainer does: hooks called directly, no CallbackList.

    Batch logs hold the loss as a tensor; ``after_step(epoch, step)`` runs after each update.
    """
    optimizer = optimizer or model.optimizer
    loss_fn = keras.losses.get(loss)
    for cb in callbacks:
        cb.set_model(model)
        cb.set_params({"epochs": epochs, "steps": len(batches), "verbose": 0})
    model.stop_training = False
    for cb in callbacks:
        cb.on_train_begin()
    logs = {}
    for epoch in range(epochs):
        for cb in callbacks:
            cb.on_epoch_begin(epoch)
        losses = []
        for step, (x, y) in enumerate(batches):
            for cb in callbacks:
                cb.on_train_batch_begin(step)
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(loss_fn(y, model(x, training=True)))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)
            if after_step is not None:
                after_step(epoch, step)
            losses.append(float(loss))
            batch_logs = {"loss": loss}
            for cb in callbacks:
                cb.on_train_batch_end(step, batch_logs)
            if model.stop_training:
                break
        logs = {"loss": float(np.mean(losses))}
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    for cb in callbacks:
        cb.on_train_end(logs)
    return logs


class WeightRecorder(keras.callbacks.Callback):
    """Copies the weights after every batch and epoch."""

    def __init__(self):
        super().__init__()
        self.batch_end, self.epoch_end = {}, {}
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.batch_end[(self._epoch, batch)] = self.model.get_weights()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_end[epoch] = self.model.get_weights()


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))


def _events(logdir):
    """{tag: [(step, plugin, value)]} and the number of graph_def events under ``logdir``."""
    tags, graphs = {}, 0
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            graphs += bool(event.graph_def)
            for v in event.summary.value:
                value = tf.make_ndarray(v.tensor)
                tags.setdefault(v.tag, []).append(
                    (event.step, v.metadata.plugin_data.plugin_name, value))
    return tags, graphs


# --- RollbackOnNaN -----------------------------------------------------------------------------

def _batches_with_nan(nan_at):
    """Endless batches of 8; the global batch ``nan_at`` has a NaN label.

    (A NaN *input* is no good here: ReLU maps it to 0, so the loss stays finite while the
    gradient, and so the weights, turn NaN; the snapshot check catches that case.)
    """
    x, y = _data(8)
    i = 0
    while True:
        yb = y.copy()
        if i == nan_at:
            yb[0, 0] = np.nan
        yield x, yb
        i += 1


@pytest.mark.parametrize("every", [None, 1])
def test_rollback_on_nan_stops_and_restores_the_last_good_snapshot(every, capsys):
    model = _dense_model(keras.optimizers.Adam(0.01))
    recorder, guard = WeightRecorder(), RollbackOnNaN(every_n_batches=every)
    history = model.fit(_batches_with_nan(6), steps_per_epoch=4, epochs=4, verbose=0,
                        shuffle=False, callbacks=[recorder, guard])

    assert (guard.failed_epoch, guard.failed_batch) == (1, 2)  # global batch 6
    assert not np.isfinite(guard.failed_loss)
    assert len(history.history["loss"]) == 2
    weights = model.get_weights()
    assert all(np.isfinite(w).all() for w in weights)
    if every is None:
        assert guard.restored_from == "end of epoch 0"
        assert _same(weights, recorder.epoch_end[0])
    else:
        assert guard.restored_from == "epoch 1 batch 1"
        assert _same(weights, recorder.batch_end[(1, 1)])
    # The optimizer's NaN moments were rolled back too, so training can simply continue.
    assert all(np.isfinite(v.numpy()).all() for v in model.optimizer.variables)
    assert int(model.optimizer.iterations.numpy()) == (4 if every is None else 6)
    x, y = _data(16)
    again = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(again.history["loss"][0])
    assert "RollbackOnNaN: loss became nan at epoch 1, batch 2" in capsys.readouterr().err


def test_rollback_on_nan_catches_nan_weights_when_relu_hides_a_nan_input():
    # Regression: a NaN input gives a finite loss (ReLU maps NaN to 0) but NaN gradients, so
    # checking the loss alone would keep and snapshot NaN weights.
    x, y = _data(8)

    def batches():
        for i in range(100):
            xb = x.copy()
            if i == 6:
                xb[0, 0] = np.nan
            yield xb, y

    model = _dense_model(keras.optimizers.Adam(0.01))
    recorder, guard = WeightRecorder(), RollbackOnNaN()
    model.fit(batches(), steps_per_epoch=4, epochs=4, verbose=0, shuffle=False,
              callbacks=[recorder, guard])
    assert (guard.failed_epoch, guard.failed_batch) == (1, None)
    assert _same(model.get_weights(), recorder.epoch_end[0])


def test_rollback_on_nan_in_a_manual_loop_catches_nan_weights_behind_a_finite_loss(capsys):
    model = _dense_model("sgd")
    x, y = _data(16)
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]

    def corrupt(epoch, step):  # the last update of epoch 1 overflows; its loss was finite
        if (epoch, step) == (1, 1):
            model.layers[0].kernel.assign(np.full((4, 3), np.inf, np.float32))

    recorder, guard = WeightRecorder(), RollbackOnNaN()
    run_loop(model, [recorder, guard], batches, epochs=4, after_step=corrupt)

    assert (guard.failed_epoch, guard.failed_batch) == (1, None)
    assert model.stop_training
    assert _same(model.get_weights(), recorder.epoch_end[0])
    assert "weights became NaN/Inf at epoch 1;" in capsys.readouterr().err


def test_rollback_on_nan_rejects_a_bad_interval():
    with pytest.raises(TfprodError, match="every_n_batches=0"):
        RollbackOnNaN(every_n_batches=0)


# --- LossStagnation ----------------------------------------------------------------------------

def test_loss_stagnation_stops_a_model_that_cannot_learn(capsys):
    model = _dense_model(keras.optimizers.SGD(learning_rate=0.0))
    x, _ = _data(32)
    y = np.random.default_rng(1).normal(size=(32, 1)).astype("float32")
    stall = LossStagnation(patience=3)
    history = model.fit(x, y, batch_size=8, epochs=20, verbose=0, callbacks=[stall])

    assert len(history.history["loss"]) == 4  # best at epoch 0, then 3 epochs without progress
    assert stall.stalled_epoch == 3
    assert "is flat" in stall.message and "learning rate" in stall.message
    assert stall.message in capsys.readouterr().err


def test_loss_stagnation_leaves_a_learning_model_alone():
    model = _dense_model(keras.optimizers.SGD(learning_rate=0.05))
    x, y = _data(32)
    stall = LossStagnation(patience=3)
    history = model.fit(x, y, batch_size=8, epochs=10, verbose=0, callbacks=[stall])
    assert len(history.history["loss"]) == 10
    assert stall.stalled_epoch is None


def test_loss_stagnation_warn_mode_in_a_manual_loop_keeps_training():
    model = _dense_model(keras.optimizers.SGD(learning_rate=0.0))
    x, y = _data(16)
    stall = LossStagnation(patience=2, action="warn")
    run_loop(model, [stall], [(x[:8], y[:8]), (x[8:], y[8:])], epochs=6)
    assert stall.stalled_epoch == 2
    assert not model.stop_training


def test_loss_stagnation_tells_a_bouncing_loss_from_a_flat_one():
    stall = LossStagnation(patience=3, delta_mode="absolute", min_delta=0.01)
    stall.set_model(types.SimpleNamespace(stop_training=False))
    stall.on_train_begin()
    for epoch, loss in enumerate([1.0, 0.5, 0.8, 0.6, 0.9]):
        stall.on_epoch_end(epoch, {"loss": loss})
    assert stall.stalled_epoch == 4 and stall.model.stop_training
    assert "bounces" in stall.message and "lower the learning rate" in stall.message


def test_loss_stagnation_names_the_missing_monitor():
    stall = LossStagnation("val_loss")
    stall.set_model(types.SimpleNamespace(stop_training=False))
    stall.on_train_begin()
    with pytest.raises(TfprodError, match="'val_loss'.*\\['loss'\\]"):
        stall.on_epoch_end(0, {"loss": 1.0})
    with pytest.raises(TfprodError, match="delta_mode='percent'"):
        LossStagnation(delta_mode="percent")


# --- GradientStats -----------------------------------------------------------------------------

def test_gradient_stats_writes_histograms_for_every_variable_and_the_graph(tmp_path):
    model = _dense_model("sgd")
    x, y = _data(32)
    stats = GradientStats((x[:16], y[:16]), logdir=tmp_path, log_graph=True)
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[stats])

    tags, graphs = _events(tmp_path / "train")
    assert graphs == 1
    for v in model.trainable_variables:
        for kind in ("gradients", "weights"):
            entries = tags[f"{kind}/{v.path}"]
            assert [(step, plugin) for step, plugin, _ in entries] == [(0, "histograms"),
                                                                      (1, "histograms")]
        layer = v.path.rsplit("/", 1)[0]
        assert f"grad_norm/{layer}" in tags and f"update_ratio/{layer}" in tags
    # The last weight histogram holds the final weights: bucket counts sum to the size.
    last = tags[f"weights/{model.layers[0].kernel.path}"][-1][2]
    assert last[:, 2].sum() == 12

    # Equivalence: the logged norms equal the obvious computation on the final weights.
    with tf.GradientTape() as tape:
        loss = keras.losses.MeanSquaredError()(y[:16], model(x[:16], training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    for layer in model.layers:
        expected = np.sqrt(sum(float(tf.reduce_sum(g**2)) for v, g in
                               zip(model.trainable_variables, grads, strict=True)
                               if v.path.startswith(layer.kernel.path.rsplit("/", 1)[0] + "/")))
        got = stats.latest["grad_norm"][layer.kernel.path.rsplit("/", 1)[0]]
        assert got == pytest.approx(expected, rel=1e-5)
    assert stats.latest["loss"] == pytest.approx(float(loss), rel=1e-5)
    assert all(0 < r < 1 for r in stats.latest["update_ratio"].values())
    assert history.history["grad_none"] == [0, 0]
    assert np.isfinite(history.history["grad_norm"]).all()


@pytest.mark.filterwarnings("ignore:Gradients do not exist")
def test_gradient_stats_reports_variables_cut_off_from_the_loss(capsys):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    kept = keras.layers.Dense(1, name="kept")(inputs)
    cut = keras.layers.Dense(1, name="cut")(inputs)
    model = keras.Model(inputs, keras.layers.Add()([kept, keras.ops.stop_gradient(cut)]))
    model.compile("sgd", "mse")
    x, y = _data(16)
    stats = GradientStats((x, y))
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[stats])

    assert sorted(stats.latest["none"]) == ["cut/bias", "cut/kernel"]
    assert "cut" not in stats.latest["grad_norm"]
    assert history.history["grad_none"] == [2]
    assert "no gradient for cut/kernel, cut/bias" in capsys.readouterr().err


def test_gradient_stats_flags_vanishing_gradients_in_a_deep_sigmoid_stack():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,))]
                             + [keras.layers.Dense(4, activation="sigmoid") for _ in range(24)]
                             + [keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = _data(16)
    stats = GradientStats((x, y))
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[stats])

    def layer(i):
        return model.layers[i].kernel.path.rsplit("/", 1)[0]

    assert layer(0) in stats.latest["vanishing"]
    assert layer(-1) not in stats.latest["vanishing"]
    assert stats.latest["exploding"] == []
    assert history.history["grad_vanishing"][0] >= 1


def test_gradient_stats_in_a_manual_loop_leaves_model_state_alone(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                              keras.layers.BatchNormalization(), keras.layers.Dropout(0.5),
                              keras.layers.Dense(1)])  # not compiled: the loss comes from loss=
    x, y = _data(32)

    class StateRecorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seen = []

        def on_train_batch_end(self, batch, logs=None):
            self.seen.append([v.numpy().copy() for v in self.model.non_trainable_variables])

    before, after = StateRecorder(), StateRecorder()
    stats = GradientStats((x[:8], y[:8]), logdir=tmp_path, every_n_batches=2, loss="mse")
    run_loop(model, [before, stats, after], [(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)],
             epochs=2, optimizer=keras.optimizers.SGD(0.01))

    assert all(_same(b, a) for b, a in zip(before.seen, after.seen, strict=True))
    assert stats.latest["step"] == 8
    assert all(r is not None and r > 0 for r in stats.latest["update_ratio"].values())
    tags, _ = _events(tmp_path / "train")
    assert [step for step, _, _ in tags[f"gradients/{model.layers[0].kernel.path}"]] == [2, 4, 6, 8]


def test_gradient_stats_leaves_per_output_loss_logs_alone():
    # Regression: for multi-output models compute_loss updates the per-output loss trackers;
    # measuring every batch must not change what fit reports.
    def fit(callbacks):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,))
        outputs = {"a": keras.layers.Dense(1, name="a")(inputs),
                   "b": keras.layers.Dense(1, name="b")(inputs)}
        model = keras.Model(inputs, outputs)
        model.compile("sgd", {"a": "mse", "b": "mae"})
        history = model.fit(x, {"a": y, "b": -y}, batch_size=8, epochs=1, verbose=0,
                            shuffle=False, callbacks=callbacks)
        return {k: v for k, v in history.history.items() if not k.startswith("grad_")}

    x, y = _data(16)
    stats = GradientStats((x[:4], {"a": y[:4] + 1, "b": y[:4]}), every_n_batches=1)
    assert fit([stats]) == fit([])
    assert sorted(stats.latest["grad_norm"]) == ["a", "b"]


def test_gradient_stats_needs_a_loss_and_a_batch():
    with pytest.raises(TfprodError, match="expected one fixed batch"):
        GradientStats(np.zeros((2, 4)))
    with pytest.raises(TfprodError, match="log_graph=True but logdir=None"):
        GradientStats((np.zeros((2, 4)), np.zeros((2, 1))), log_graph=True)
    stats = GradientStats((np.zeros((2, 4)), np.zeros((2, 1))))
    stats.set_model(_dense_model(optimizer=None))
    with pytest.raises(TfprodError, match="compile it with a loss or pass"):
        stats.on_train_begin()


# --- LearningRateLogger ------------------------------------------------------------------------

def test_learning_rate_logger_logs_the_decayed_schedule_value_exactly(tmp_path):
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=3, decay_rate=0.5)
    model = _dense_model(keras.optimizers.SGD(schedule))
    x, y = _data(32)
    logger = LearningRateLogger(tmp_path)
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[logger])

    expected = [float(schedule(4 * (epoch + 1))) for epoch in range(3)]  # 4 steps per epoch
    assert history.history["learning_rate"] == expected
    assert expected[0] != expected[1]
    tags, _ = _events(tmp_path / "train")
    assert [(s, float(v)) for s, _, v in tags["learning_rate"]] == list(enumerate(expected))


def test_learning_rate_logger_in_a_manual_loop_per_batch(tmp_path):
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([2, 5], [0.1, 0.01, 0.001])
    optimizer = keras.optimizers.SGD(schedule)
    model = _dense_model(optimizer=None)
    x, y = _data(16)
    logger = LearningRateLogger(tmp_path, every_n_batches=1, optimizer=optimizer)
    run_loop(model, [logger], [(x[:8], y[:8]), (x[8:], y[8:])], epochs=3, optimizer=optimizer)

    tags, _ = _events(tmp_path / "train")
    got = [(s, float(v)) for s, _, v in tags["batch_learning_rate"]]
    assert got == [(i, float(schedule(i))) for i in range(1, 7)]
    assert logger.values == [(0, float(schedule(2))), (1, float(schedule(4))),
                             (2, float(schedule(6)))]


def test_learning_rate_logger_needs_an_optimizer():
    logger = LearningRateLogger()
    logger.set_model(_dense_model(optimizer=None))
    with pytest.raises(TfprodError, match="found no optimizer"):
        logger.on_train_begin()


# --- under tfprod's Trainer (the loop the callbacks are documented for) -----------------------

def _trainer_batches(nan_at=None, n=64):
    """Batches of 8 from ``_data(n)``, in order; the batch ``nan_at`` has a NaN label."""
    x, y = _data(n)
    y = y.copy()
    if nan_at is not None:
        y[8 * nan_at, 0] = np.nan
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8)


def test_trainer_rollback_on_nan_restores_the_last_epoch_mid_fit(capsys):
    from tfprod.train import Trainer

    model = _dense_model(keras.optimizers.Adam(0.01))
    recorder, rollback = WeightRecorder(), RollbackOnNaN()
    # 4 steps per epoch over 8 batches: epoch 0 is clean, epoch 1 meets the NaN at its batch 2.
    history = Trainer(model).fit(_trainer_batches(nan_at=6), epochs=5, steps_per_epoch=4,
                                 callbacks=[recorder, rollback])

    assert (rollback.failed_epoch, rollback.failed_batch) == (1, 2)
    assert rollback.restored_from == "end of epoch 0"
    assert (1, 2) in recorder.batch_end and not all(  # the NaN step did reach the weights
        np.isfinite(w).all() for w in recorder.batch_end[(1, 2)])
    assert (1, 3) not in recorder.batch_end  # training stopped at the NaN batch
    assert _same(model.get_weights(), recorder.epoch_end[0])
    assert int(model.optimizer.iterations.numpy()) == 4  # the optimizer's state came back too
    assert len(history.history["loss"]) == 2
    assert "restored the weights from the end of epoch 0" in capsys.readouterr().err


def test_trainer_loss_stagnation_stops_a_model_that_cannot_learn():
    from tfprod.train import Trainer

    model = _dense_model(keras.optimizers.SGD(learning_rate=0.0))
    x, _ = _data(32)
    y = np.random.default_rng(1).normal(size=(32, 1)).astype("float32")
    stall = LossStagnation(patience=3)
    history = Trainer(model).fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8),
                                 epochs=20, callbacks=[stall])
    assert stall.stalled_epoch == 3 and "is flat" in stall.message
    assert len(history.history["loss"]) == 4


def test_trainer_gradient_stats_measures_the_gradient_and_the_last_update():
    from tfprod.train import Trainer

    model = _dense_model(keras.optimizers.SGD(0.05))
    x, y = _data(32)
    recorder = WeightRecorder()
    stats = GradientStats((x[:16], y[:16]))
    history = Trainer(model).fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8),
                                 epochs=1, callbacks=[recorder, stats])

    with tf.GradientTape() as tape:  # the gradient at the final weights, computed here
        loss = keras.losses.MeanSquaredError()(y[:16], model(x[:16], training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    assert history.history["grad_norm"] == [pytest.approx(float(tf.linalg.global_norm(grads)),
                                                          rel=1e-5)]
    assert stats.latest["loss"] == pytest.approx(float(loss), rel=1e-6)
    # The update ratio spans the epoch's last step (batch 2 -> 3), known on the first epoch
    # because the Trainer tells callbacks its step count.
    before, after = recorder.batch_end[(0, 2)], recorder.batch_end[(0, 3)]
    ratios = list(stats.latest["update_ratio"].values())  # layer by layer: kernel, bias
    assert len(ratios) == 2
    for ratio, (i, j) in zip(ratios, [(0, 1), (2, 3)], strict=True):
        moved = sum(np.sum((after[k] - before[k]).astype(np.float64) ** 2) for k in (i, j))
        size = sum(np.sum(before[k].astype(np.float64) ** 2) for k in (i, j))
        assert ratio == pytest.approx(np.sqrt(moved / size), rel=1e-5)


def test_trainer_learning_rate_logger_logs_the_decayed_schedule(tmp_path):
    from tfprod.train import Trainer

    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=3, decay_rate=0.5)
    model = _dense_model(keras.optimizers.SGD(schedule))
    x, y = _data(32)
    logger = LearningRateLogger(tmp_path)
    history = Trainer(model).fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8),
                                 epochs=3, callbacks=[logger])
    expected = [float(schedule(4 * (epoch + 1))) for epoch in range(3)]
    assert history.history["learning_rate"] == expected
    tags, _ = _events(tmp_path / "train")
    assert [(s, float(v)) for s, _, v in tags["learning_rate"]] == list(enumerate(expected))
