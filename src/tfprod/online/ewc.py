"""``EWC``: elastic weight consolidation, online form (Schwarz et al. 2018).

At each :meth:`EWC.consolidate` the diagonal of the empirical Fisher information is computed
once, from per-example gradients of the log-likelihood on the examples given, and folded into
the running importance ``F <- gamma * F + F_new``; the weights at that moment become the anchor
``theta*``. Every later step adds ``strength / 2 * sum(F * (theta - theta*)^2)`` to the loss,
through ``Trainer(penalty=...)``: the Fisher is never recomputed per step.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfprod.errors import TfprodError
from tfprod.online.learner import Learner


class EWC(Learner):
    """Fine-tuning with a quadratic anchor on the weights that mattered.

    Args:
        model: a compiled Keras model.
        strength: lambda, the weight of the anchor.
        gamma: decay of the older importance at each consolidation (1.0: keep it all).
        fisher_examples: examples the Fisher is estimated on at each consolidation.
        **kwargs: batch_size, epochs, seed, strategy (see :class:`Learner`).
    """

    name = "ewc"

    def __init__(self, model: keras.Model, *, strength: float = 100.0, gamma: float = 1.0,
                 fisher_examples: int = 256, **kwargs: Any):
        if not strength >= 0 or not 0 <= gamma <= 1:
            raise TfprodError(f"strength={strength}, gamma={gamma}; expected strength >= 0 and "
                              "gamma in [0, 1]")
        variables = model.trainable_variables
        self.fisher = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
        self.anchor = [tf.Variable(v, trainable=False) for v in variables]
        self.strength, self.gamma, self.fisher_examples = strength, gamma, fisher_examples
        self.consolidations = 0
        super().__init__(model, **kwargs)
        self._loss = keras.losses.get(model.loss)

    def penalty(self) -> Any:
        variables = self.model.trainable_variables
        fisher, anchor, strength = self.fisher, self.anchor, self.strength

        def ewc(_x: Any, _y_pred: Any) -> tf.Tensor:
            return strength / 2 * tf.add_n([
                tf.reduce_sum(f * tf.square(tf.cast(v, tf.float32) - a))
                for f, v, a in zip(fisher, variables, anchor, strict=True)])

        return ewc

    def consolidate(self, x: dict[str, np.ndarray], y: np.ndarray) -> None:
        y = self.check(x, y)
        n = min(len(y), self.fisher_examples)
        if n == 0:
            return
        index = self.rng.choice(len(y), size=n, replace=False)
        model_x = self.inputs.structure([x[k][index] for k in self.inputs.names])
        squares = self._fisher(model_x, tf.constant(y[index]))
        for f, s in zip(self.fisher, squares, strict=True):
            f.assign(self.gamma * f + s / n)
        for a, v in zip(self.anchor, self.model.trainable_variables, strict=True):
            a.assign(tf.cast(v, tf.float32))
        self.consolidations += 1

    def _fisher(self, x: Any, y: tf.Tensor) -> list[tf.Tensor]:
        """Sum over examples of the squared per-example gradient of the loss."""
        model, loss = self.model, self._loss
        variables = model.trainable_variables

        @tf.function
        def one(xi, yi):
            with tf.GradientTape() as tape:
                value = loss(yi[None], model(tf.nest.map_structure(lambda t: t[None], xi),
                                             training=False))
            return [tf.square(tf.cast(g, tf.float32)) if g is not None else tf.zeros_like(v)
                    for g, v in zip(tape.gradient(value, variables), variables, strict=True)]

        total = [tf.zeros_like(v, tf.float32) for v in variables]
        for i in range(int(y.shape[0])):
            xi = tf.nest.map_structure(lambda t, i=i: tf.constant(t[i]), x)
            total = [a + b for a, b in zip(total, one(xi, y[i]), strict=True)]
        return total

    def state(self) -> dict[str, np.ndarray]:
        out = {**super().state(), "ewc/consolidations": np.asarray(self.consolidations)}
        for i, (f, a) in enumerate(zip(self.fisher, self.anchor, strict=True)):
            out[f"ewc/fisher/{i}"] = f.numpy()
            out[f"ewc/anchor/{i}"] = a.numpy()
        return out

    def load_state(self, arrays: dict[str, Any]) -> None:
        super().load_state(arrays)
        self.consolidations = int(arrays["ewc/consolidations"])
        for i, (f, a) in enumerate(zip(self.fisher, self.anchor, strict=True)):
            f.assign(arrays[f"ewc/fisher/{i}"])
            a.assign(arrays[f"ewc/anchor/{i}"])
