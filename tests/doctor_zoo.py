"""The doctor's zoo: broken setups, each with the cause its first finding must name, and healthy
setups that must draw no error or warning.

Shared by ``tests/test_doctor.py`` and ``benchmarks/doctor_speed.py --zoo``. Every model is tiny
(an MLP or a small CNN on the 8x8 sample digits, an MLP on synthetic tables, a small RNN on short
synthetic sequences), so a diagnosis takes a second or two.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf


@dataclasses.dataclass
class ZooData:
    """Every data set the zoo uses, made once (digits from scikit-learn, the rest generated)."""

    digits: tuple[np.ndarray, np.ndarray]  # [N, 8, 8, 1] float32 in 0..255, int64 labels
    digits_test: tuple[np.ndarray, np.ndarray]
    table: tuple[np.ndarray, np.ndarray]  # standardized heavy-tailed features, 3 classes
    table_valid: tuple[np.ndarray, np.ndarray]
    rare: tuple[np.ndarray, np.ndarray]  # binary, 2% positives, learnable
    regression: tuple[np.ndarray, np.ndarray]
    sequences: tuple[np.ndarray, np.ndarray]  # [N, 30, 4], binary


def _heavy_tailed(rng, n: int, d: int) -> np.ndarray:
    """Student-t (3 d.o.f.) features, standardized: mean 0, std 1, tails past 10 std."""
    x = rng.standard_t(3, size=(n, d))
    return ((x - x.mean(axis=0)) / x.std(axis=0)).astype("float32")


def _table(rng, n: int, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = _heavy_tailed(rng, n, weights.shape[0])
    logits = np.clip(x, -3, 3) @ weights + rng.gumbel(size=(n, weights.shape[1])) * 0.5
    return x, np.argmax(logits, axis=1).astype("int64")


def make_data() -> ZooData:
    from tfprod.data import load_digits

    (x, y), (xt, yt) = load_digits(8)
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(8, 3)) * 1.5
    table = _table(rng, 1200, weights)
    table_valid = _table(rng, 400, weights)
    xr = _heavy_tailed(rng, 2000, 6)
    score = xr[:, 0] + xr[:, 1] + 0.3 * rng.normal(size=2000)
    rare = (xr, (score > np.quantile(score, 0.98)).astype("float32"))
    xg = rng.normal(size=(800, 4)).astype("float32")
    yg = (np.sin(2 * xg[:, 0]) + xg[:, 1] ** 2 + 0.3 * rng.normal(size=800)).astype("float32")
    xs = rng.normal(size=(600, 30, 4)).astype("float32")
    ys = (xs[:, :, 0].sum(axis=1) > 0).astype("int64")
    return ZooData((x.astype("float32"), y), (xt.astype("float32"), yt), table, table_valid,
                   rare, (xg, yg), (xs, ys))


@dataclasses.dataclass
class Case:
    """What to diagnose: a compiled model, its training batches, and ``diagnose`` keywords."""

    model: keras.Model
    dataset: tf.data.Dataset
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Broken:
    """A broken setup and what the first finding must be."""

    build: Callable[[ZooData], Case]
    check: str
    severity: str
    words: str  # in the first finding's title (lower case)
    data: str  # "image", "tabular" or "sequence"


def batches(x, y, batch_size=32, *, shuffle=True):
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(y), seed=0)
    return ds.batch(batch_size)


def mlp(*, units=10, activation="softmax", loss="sparse_categorical_crossentropy",
        optimizer=None, rescale=True, hidden=None, between=None, frozen=False, before=None):
    """Digits: Rescaling(1/255) -> Flatten [-> before] -> Dense(32, relu) [-> between] -> out."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Rescaling(1 / 255)(inputs) if rescale else inputs
    h = keras.layers.Flatten()(h)
    if before is not None:
        h = before(h)
    h = keras.layers.Dense(32, activation="relu", **(hidden or {}))(h)
    if between is not None:
        h = between(h)
    model = keras.Model(inputs, keras.layers.Dense(units, activation=activation)(h))
    if frozen:
        for layer in model.layers:
            layer.trainable = False
    model.compile(optimizer or keras.optimizers.Adam(1e-3), loss)
    return model


def dense(d, units, activation, loss, *, dropout=0.0, batchnorm=False, optimizer=None,
          regularizer=None, width=32):
    """Tables: two Dense(width, relu) [+ BatchNorm] [+ Dropout] -> Dense(units, activation)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((d,))
    h = inputs
    for _ in range(2):
        h = keras.layers.Dense(width, activation="relu", kernel_regularizer=regularizer)(h)
        if batchnorm:
            h = keras.layers.BatchNormalization()(h)
        if dropout:
            h = keras.layers.Dropout(dropout)(h)
    model = keras.Model(inputs, keras.layers.Dense(units, activation=activation,
                                                   kernel_regularizer=regularizer)(h))
    model.compile(optimizer or keras.optimizers.Adam(1e-3), loss)
    return model


def cnn(*, batchnorm=False):
    """Digits: Rescaling -> Conv2D(8) [-> BatchNorm] -> ReLU -> pool -> Dense(10, softmax)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Rescaling(1 / 255)(inputs)
    h = keras.layers.Conv2D(8, 3, padding="same")(h)
    if batchnorm:
        h = keras.layers.BatchNormalization()(h)
    h = keras.layers.MaxPooling2D()(keras.layers.ReLU()(h))
    out = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(h))
    model = keras.Model(inputs, out)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    return model


def rnn(kind="lstm", **cell):
    """Sequences [30, 4]: one recurrent layer of 16 units -> Dense(2, softmax)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((30, 4))
    layer = {"lstm": keras.layers.LSTM, "simple": keras.layers.SimpleRNN}[kind]
    h = layer(16, **cell)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(h))
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    return model


# ------------------------------------------------------------------- broken: image data


def _digits(d: ZooData, model, *, y=None, x=None, **options) -> Case:
    x = d.digits[0] if x is None else x
    return Case(model, batches(x, d.digits[1] if y is None else y), options)


def _with_nan(x):
    x = x.copy()
    x[np.random.default_rng(0).choice(len(x), 5, replace=False), 3, 4, 0] = np.nan
    return x


def _sorted_digits(d: ZooData) -> Case:
    x, y = d.digits
    order = np.argsort(y, kind="stable")
    return Case(mlp(), batches(x[order], y[order], shuffle=False))


_NAMES = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                   "nine"])

IMAGE: dict[str, Broken] = {
    "MSE on a softmax over class labels": Broken(
        lambda d: _digits(d, mlp(loss="mse")), "loss_pairing", "error", "mse", "image"),
    "learning rate far too high (Adam 1.0)": Broken(
        lambda d: _digits(d, mlp(optimizer=keras.optimizers.Adam(1.0))),
        "learning_rate", "error", "too high", "image"),
    "learning rate far too low (Adam 1e-7)": Broken(
        lambda d: _digits(d, mlp(optimizer=keras.optimizers.Adam(1e-7))),
        "learning_rate", "error", "too low", "image"),
    "SGD learning rate far too high": Broken(
        lambda d: _digits(d, mlp(optimizer=keras.optimizers.SGD(20.0))),
        "learning_rate", "error", "too high", "image"),
    "unnormalized 0-255 inputs": Broken(
        lambda d: _digits(d, mlp(rescale=False)), "input_scale", "error", "unnormalized",
        "image"),
    "dead ReLUs from a bad bias": Broken(
        lambda d: _digits(d, mlp(hidden={"bias_initializer": keras.initializers.Constant(-20.0)})),
        "dead_units", "error", "dead relu", "image"),
    "labels shuffled apart from their images": Broken(
        lambda d: _digits(d, mlp(), y=np.random.default_rng(0).permutation(d.digits[1])),
        "label_signal", "error", "no signal", "image"),
    "sigmoid output on 10 classes": Broken(
        lambda d: _digits(d, mlp(activation="sigmoid")), "loss_pairing", "error", "sigmoid",
        "image"),
    "all layers frozen": Broken(
        lambda d: _digits(d, mlp(frozen=True)), "trainable", "error", "frozen", "image"),
    "gradient cut by round()": Broken(
        lambda d: _digits(d, mlp(between=keras.layers.Lambda(lambda t: keras.ops.round(t)))),
        "gradient_cut", "error", "non-differentiable", "image"),
    "gradient cut by stop_gradient()": Broken(
        lambda d: _digits(d, mlp(between=keras.layers.Lambda(keras.ops.stop_gradient))),
        "gradient_cut", "error", "non-differentiable", "image"),
    "NaN in the images": Broken(
        lambda d: _digits(d, mlp(), x=_with_nan(d.digits[0])), "data_values", "error", "nan",
        "image"),
    "softmax output with from_logits=True": Broken(
        lambda d: _digits(d, mlp(loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True))), "loss_pairing", "warning", "from_logits", "image"),
    "logits output with from_logits=False": Broken(
        lambda d: _digits(d, mlp(activation=None)), "loss_pairing", "error", "logits", "image"),
    "one-hot labels with a sparse loss": Broken(
        lambda d: _digits(d, mlp(), y=np.eye(10, dtype="float32")[d.digits[1]]),
        "loss_pairing", "error", "one-hot", "image"),
    "integer labels with categorical_crossentropy": Broken(
        lambda d: _digits(d, mlp(loss="categorical_crossentropy")),
        "loss_pairing", "error", "integer labels", "image"),
    "MSE on integer class ids (one linear output)": Broken(
        lambda d: _digits(d, mlp(units=1, activation=None, loss="mse")),
        "loss_pairing", "error", "integer class ids", "image"),
    "labels outside the output's range": Broken(
        lambda d: _digits(d, mlp(units=5)), "labels", "error", "outside", "image"),
    "string labels": Broken(
        lambda d: _digits(d, mlp(), y=_NAMES[d.digits[1]]), "labels", "error", "string",
        "image"),
    "class ids scaled to [0, 1] with the features": Broken(
        lambda d: _digits(d, mlp(), y=(d.digits[1] / 9).astype("float32")),
        "labels", "error", "non-integer", "image"),
    "huge initial weights": Broken(
        lambda d: _digits(d, mlp(hidden={"kernel_initializer": keras.initializers.RandomNormal(
            stddev=30.0)})), "init_loss", "error", "initialization", "image"),
    "file sorted by label, read in order": Broken(
        _sorted_digits, "batch_order", "error", "not shuffled", "image"),
    "dropout 0.9 after every layer": Broken(
        lambda d: _digits(d, mlp(before=keras.layers.Dropout(0.9),
                                 between=keras.layers.Dropout(0.9))),
        "regularization", "error", "regularization", "image"),
    "BatchNorm on batches of 4 (CNN)": Broken(
        lambda d: Case(cnn(batchnorm=True), batches(*d.digits, batch_size=4)),
        "batch_norm", "warning", "batchnormalization", "image"),
    "LR schedule decaying to ~0 in 70 steps": Broken(
        lambda d: _digits(d, mlp(optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=10, decay_rate=0.5)))),
        "lr_schedule", "error", "schedule", "image"),
    "validation split copied from training": Broken(
        lambda d: _digits(d, mlp(), validation_data=batches(d.digits[0][:300],
                                                            d.digits[1][:300])),
        "validation_overlap", "error", "also in the training", "image"),
    "validation images rotated (another source)": Broken(
        lambda d: _digits(d, mlp(), validation_data=batches(
            np.rot90(d.digits_test[0], axes=(1, 2)).copy(), d.digits_test[1])),
        "validation_shift", "error", "different distribution", "image"),
}


# ----------------------------------------------------------------- broken: tabular data


def _with_raw_amount(d: ZooData) -> Case:
    x, y = d.table
    amount = np.random.default_rng(1).lognormal(10, 1, size=(len(y), 1)).astype("float32")
    return Case(dense(9, 3, "softmax", "sparse_categorical_crossentropy"),
                batches(np.concatenate([x, amount], axis=1), y))


def _with_label_column(d: ZooData) -> Case:
    x, y = d.table
    leaked = np.concatenate([x[:, :4], y[:, None].astype("float32"), x[:, 4:]], axis=1)
    return Case(dense(9, 3, "softmax", "sparse_categorical_crossentropy"), batches(leaked, y))


def _with_target_copy(d: ZooData) -> Case:
    x, y = d.regression
    noise = np.random.default_rng(2).normal(size=len(y)) * 0.01 * y.std()
    leaked = np.concatenate([x, (y + noise)[:, None].astype("float32")], axis=1)
    return Case(dense(5, 1, None, "mse"), batches(leaked, y))


def _sorted_by_target(d: ZooData) -> Case:
    x, y = d.regression
    order = np.argsort(y)
    return Case(dense(4, 1, None, "mse"), batches(x[order], y[order], shuffle=False))


def _shifted_validation(d: ZooData) -> Case:
    x, y = d.table_valid
    moved = x.copy()
    moved[:, :2] += 1.5  # two features drifted by 1.5 std (another period, another source)
    return Case(dense(8, 3, "softmax", "sparse_categorical_crossentropy"), batches(*d.table),
                {"validation_data": batches(moved, y)})


TABULAR: dict[str, Broken] = {
    "a raw amount column beside standardized ones": Broken(
        _with_raw_amount, "input_scale", "error", "unnormalized", "tabular"),
    "98:2 classes with an unweighted loss": Broken(
        lambda d: Case(dense(6, 1, "sigmoid", "binary_crossentropy"), batches(*d.rare)),
        "class_balance", "error", "imbalance", "tabular"),
    "the label left in the features": Broken(
        _with_label_column, "leakage", "error", "leaks the label", "tabular"),
    "a near copy of the regression target in the features": Broken(
        _with_target_copy, "leakage", "error", "leaks the label", "tabular"),
    "sparse cross-entropy on continuous targets": Broken(
        lambda d: Case(dense(4, 10, "softmax", "sparse_categorical_crossentropy"),
                       batches(*d.regression)),
        "loss_pairing", "error", "continuous targets", "tabular"),
    "binary cross-entropy on a continuous target": Broken(
        lambda d: Case(dense(4, 1, "sigmoid", "binary_crossentropy"), batches(*d.regression)),
        "loss_pairing", "error", "continuous targets", "tabular"),
    "regression file sorted by target, read in order": Broken(
        _sorted_by_target, "batch_order", "error", "not shuffled", "tabular"),
    "L2 penalty of 1.0 on every layer": Broken(
        lambda d: Case(dense(8, 3, "softmax", "sparse_categorical_crossentropy",
                             regularizer=keras.regularizers.L2(1.0)), batches(*d.table)),
        "regularization", "error", "regularization", "tabular"),
    "BatchNorm on batches of 2 (MLP)": Broken(
        lambda d: Case(dense(8, 3, "softmax", "sparse_categorical_crossentropy",
                             batchnorm=True), batches(*d.table, batch_size=2)),
        "batch_norm", "error", "batches of 2", "tabular"),
    "validation features drifted": Broken(
        _shifted_validation, "validation_shift", "error", "different distribution", "tabular"),
    "exploding gradients in a ReLU SimpleRNN": Broken(
        lambda d: Case(rnn("simple", activation="relu",
                           recurrent_initializer=keras.initializers.Orthogonal(gain=2.5)),
                       batches(*d.sequences)),
        "recurrent_gradients", "error", "recurrent", "sequence"),
}

BROKEN: dict[str, Broken] = {**IMAGE, **TABULAR}


# --------------------------------------------------------------------------- healthy setups


def _noisy_labels(d: ZooData) -> Case:
    x, y = d.digits
    rng = np.random.default_rng(1)  # 60% of the labels replaced at random: hard, not hopeless
    noisy = y.copy()
    flip = rng.random(len(y)) < 0.6
    noisy[flip] = rng.integers(0, 10, flip.sum())
    model = dense(64, 10, "softmax", "categorical_crossentropy", dropout=0.2, batchnorm=True)
    return Case(model, batches(x.reshape(-1, 64) / 255, np.eye(10, dtype="float32")[noisy]))


def _moons(d: ZooData) -> Case:
    from sklearn.datasets import make_moons

    x, y = make_moons(800, noise=0.3, random_state=0)  # non-linear and noisy, learnable
    return Case(dense(2, 1, "sigmoid", "binary_crossentropy"),
                batches(x.astype("float32"), y.astype("float32")))


def _circles(d: ZooData) -> Case:
    from sklearn.datasets import make_circles

    x, y = make_circles(800, noise=0.1, factor=0.5, random_state=0)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return Case(dense(2, 2, None, loss), batches(x.astype("float32"), y))


def _weighted_rare(d: ZooData) -> Case:
    x, y = d.rare
    share = y.mean()
    return Case(dense(6, 1, "sigmoid", "binary_crossentropy"), batches(x, y),
                {"class_weight": {0: 0.5 / (1 - share), 1: 0.5 / share}})


def _scheduled_cnn(d: ZooData) -> Case:
    model = cnn(batchnorm=True)
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
        1e-3, decay_steps=5000)), "sparse_categorical_crossentropy")
    return Case(model, batches(*d.digits),
                {"validation_data": batches(*d.digits_test)})


HEALTHY: dict[str, Callable[[ZooData], Case]] = {
    "digits MLP": lambda d: _digits(d, mlp()),
    "digits CNN, BatchNorm, cosine schedule, held-out validation": _scheduled_cnn,
    "60% noisy labels, BatchNorm + dropout, one-hot": _noisy_labels,
    "moons, sigmoid + binary cross-entropy": _moons,
    "circles, logits + from_logits=True": _circles,
    "regression, MSE": lambda d: Case(dense(4, 1, None, "mse"), batches(*d.regression)),
    "heavy-tailed standardized features, validation from the same source": lambda d: Case(
        dense(8, 3, "softmax", "sparse_categorical_crossentropy"), batches(*d.table),
        {"validation_data": batches(*d.table_valid)}),
    "98:2 classes with class weights": _weighted_rare,
    "LSTM on sequences": lambda d: Case(rnn("lstm"), batches(*d.sequences)),
}
