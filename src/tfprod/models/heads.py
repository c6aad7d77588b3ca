"""The output head, loss and metrics that fit a task read from the labels.

- k classes: ``Dense(k, softmax)``, sparse categorical cross-entropy, accuracy and macro-F1.
- binary: one sigmoid unit, binary cross-entropy, accuracy and AUC.
- regression: one linear unit in standardized units, then ``Normalization(invert=True)`` with
  the training targets' mean and variance, so the model answers in the label's units while it
  learns at unit scale (its first prediction is the training mean); the squared error divided
  by the targets' variance as the loss (:class:`~tfprod.models.losses.ScaledMeanSquaredError`),
  MAE and RMSE in the label's units as metrics.

Each head ends in a :class:`~tfprod.models.target.Target` layer named after what the output is
(``probabilities``, ``probability``, ``value``): the serving signature's output name.
"""

from __future__ import annotations

from typing import Any

import keras

from tfprod.data.task import LabelTask
from tfprod.models.losses import ScaledMeanSquaredError
from tfprod.models.metrics import task_metrics
from tfprod.models.target import Target

LOSSES = {"binary": "binary_crossentropy", "multiclass": "sparse_categorical_crossentropy"}
OUTPUT_NAMES = {"binary": "probability", "multiclass": "probabilities", "regression": "value"}


def task_head(features: Any, task: LabelTask) -> Any:
    """The output tensor for ``task`` on top of ``features`` (a Keras tensor)."""
    if task.kind == "multiclass":
        x = keras.layers.Dense(task.units, activation="softmax", name="class_scores")(features)
    elif task.kind == "binary":
        x = keras.layers.Dense(1, activation="sigmoid", name="class_score")(features)
    else:
        x = keras.layers.Dense(1, name="standardized_value")(features)
        x = keras.layers.Normalization(mean=task.mean, variance=task.std ** 2, invert=True,
                                       name="label_units")(x)
    # float32 out whatever the policy: probabilities and values are read by people and servers.
    return Target(task.to_json(), name=OUTPUT_NAMES[task.kind], dtype="float32")(x)


def compile_for_task(model: keras.Model, task: LabelTask, *, learning_rate: float = 1e-3
                     ) -> keras.Model:
    """Compiles ``model`` with Adam, the task's loss and its metrics; returns it."""
    loss = LOSSES.get(task.kind) or ScaledMeanSquaredError(task.std)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss,
                  metrics=task_metrics(task.kind, task.num_classes))
    return model
