"""Class-incremental split digits: how much each learner forgets (``tfprod online bench``).

scikit-learn's 8x8 digits (1,797 images) split into 5 tasks of 2 classes (0/1, 2/3, ...),
learned one after another by one single-head MLP; after the last task the accuracy on the test
images of all 10 classes is reported (van de Ven & Tolias 2019's class-incremental scenario,
on split MNIST: fine-tune ~19.9%, EWC ~20.0%, LwF ~23.9%, replay ~90%, joint ~98%). Joint
training on all tasks at once is the upper bound.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

METHODS = ("finetune", "ewc", "lwf", "replay-200", "replay-500", "replay-1000", "joint")


@dataclass
class SplitResult:
    method: str
    seed: int
    accuracy: float
    per_task: list[float]
    seconds: float
    examples_per_second: float


def split_digits(seed: int = 0, test_fraction: float = 0.3) -> tuple[Any, Any, Any, Any]:
    """``(x_train, y_train, x_test, y_test)`` of the 8x8 digits, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(len(y) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def mlp(seed: int, *, hidden: int = 64, learning_rate: float = 1e-3) -> Any:
    """The single-head MLP the benchmark trains (64 -> hidden -> hidden -> 10 softmax)."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((64,), name="pixels")
    h = keras.layers.Dense(hidden, activation="relu")(inputs)
    h = keras.layers.Dense(hidden, activation="relu")(h)
    out = keras.layers.Dense(10, activation="softmax", name="probabilities")(h)
    model = keras.Model(inputs, out)
    model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def run_split(method: str, seed: int = 0, *, epochs: int = 5, batch_size: int = 32,
              ewc_strength: float = 1000.0) -> SplitResult:
    """Learn the 5 tasks in order with ``method`` (see :data:`METHODS`)."""
    from tfprod.online.strategies import make_learner

    x_tr, y_tr, x_te, y_te = split_digits(seed)
    model = mlp(seed)
    start = time.perf_counter()
    if method == "joint":
        learner = make_learner("finetune", model, batch_size=batch_size, seed=seed)
        learner.learn({"pixels": x_tr}, y_tr, epochs=epochs)
        learned = len(y_tr) * epochs
    else:
        kind, _, size = method.partition("-")
        kwargs: dict[str, Any] = {"batch_size": batch_size, "seed": seed}
        if kind == "replay":
            kwargs.update(buffer_size=int(size), balanced=True)
        if kind == "ewc":
            kwargs.update(strength=ewc_strength)
        learner = make_learner(kind, model, **kwargs)
        learned = 0
        for task in range(5):
            mask = (y_tr // 2) == task
            x, y = {"pixels": x_tr[mask]}, y_tr[mask]
            learner.learn(x, y, epochs=epochs)
            learned += int(mask.sum()) * epochs * (2 if kind == "replay" else 1)
            learner.consolidate(x, y)
    seconds = time.perf_counter() - start
    predicted = learner.predict({"pixels": x_te}).argmax(-1)
    per_task = [float(np.mean(predicted[(y_te // 2) == t] == y_te[(y_te // 2) == t]))
                for t in range(5)]
    return SplitResult(method, seed, float(np.mean(predicted == y_te)), per_task, seconds,
                       learned / seconds)
