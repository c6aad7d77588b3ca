"""``LwF``: learning without forgetting (Li & Hoiem 2016), by distillation from a teacher.

At each :meth:`LwF.consolidate` a frozen copy of the model becomes the teacher; every later
step adds ``alpha * T^2 * KL(teacher_T || student_T)`` on the current batch, the two output
distributions softened by temperature ``T`` (softmax outputs are turned back into logits with
``log``). No old examples are stored: only the teacher's weights.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfprod.errors import TfprodError
from tfprod.online.learner import Learner

_EPSILON = 1e-7


def _logits(p: tf.Tensor) -> tf.Tensor:
    return tf.math.log(tf.clip_by_value(tf.cast(p, tf.float32), _EPSILON, 1.0))


class LwF(Learner):
    """Fine-tuning with distillation from the model as it was at the last consolidation.

    Args:
        model: a compiled Keras model with softmax outputs.
        alpha: weight of the distillation term.
        temperature: softening temperature T.
        **kwargs: batch_size, epochs, seed, strategy (see :class:`Learner`).
    """

    name = "lwf"

    def __init__(self, model: keras.Model, *, alpha: float = 1.0, temperature: float = 2.0,
                 **kwargs: Any):
        if not alpha >= 0 or not temperature > 0:
            raise TfprodError(f"alpha={alpha}, temperature={temperature}; expected alpha >= 0 "
                              "and temperature > 0")
        self.teacher = keras.models.clone_model(model)
        self.teacher.set_weights(model.get_weights())
        self.teacher.trainable = False
        self.active = tf.Variable(0.0, trainable=False)  # 0 until the first consolidation
        self.alpha, self.temperature = alpha, temperature
        super().__init__(model, **kwargs)

    def penalty(self) -> Any:
        teacher, active, alpha, t = self.teacher, self.active, self.alpha, self.temperature

        def distill(x: Any, y_pred: Any) -> tf.Tensor:
            old = tf.stop_gradient(teacher(x, training=False))
            p_old = tf.nn.softmax(_logits(old) / t)
            log_new = tf.nn.log_softmax(_logits(y_pred) / t)
            kl = tf.reduce_sum(p_old * (tf.math.log(p_old + _EPSILON) - log_new), axis=-1)
            return active * alpha * t * t * tf.reduce_mean(kl)

        return distill

    def consolidate(self, x: dict[str, np.ndarray], y: np.ndarray) -> None:
        self.teacher.set_weights(self.model.get_weights())
        self.active.assign(1.0)

    def state(self) -> dict[str, np.ndarray]:
        out = {**super().state(), "lwf/active": self.active.numpy()}
        out.update({f"lwf/teacher/{i}": w for i, w in enumerate(self.teacher.get_weights())})
        return out

    def load_state(self, arrays: dict[str, Any]) -> None:
        super().load_state(arrays)
        self.active.assign(float(arrays["lwf/active"]))
        n = len(self.teacher.get_weights())
        self.teacher.set_weights([arrays[f"lwf/teacher/{i}"] for i in range(n)])
