"""Metrics that fit the task: accuracy and macro-F1 / AUC for classification, MAE and RMSE in
the label's units for regression.

Keras' own ``F1Score`` wants one-hot labels; :class:`MacroF1` takes the class indices the
sparse losses take, and averages over the classes that occur (in the labels or the
predictions), as ``sklearn.metrics.f1_score(average="macro")`` does.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tfprod")
class MacroF1(keras.metrics.Metric):
    """Macro-averaged F1 of a k-class classifier from class-index labels and class scores.

    Args:
        num_classes: the classifier's outputs.
        name: the metric's name in logs (``val_`` + it for validation).

    Example:

    >>> m = MacroF1(3)
    >>> m.update_state([0, 1, 2, 2], [[.9, .1, 0], [.2, .7, .1], [.1, .1, .8], [.6, .3, .1]])
    >>> float(m.result())   # classes 0, 1, 2: F1 0.667, 1.0, 0.667
    0.7777...
    """

    def __init__(self, num_classes: int, name: str = "macro_f1", dtype: Any = None) -> None:
        super().__init__(name=name, dtype=dtype)
        self.num_classes = int(num_classes)
        shape = (self.num_classes,)
        self.true_positives = self.add_variable(shape, "zeros", name="true_positives")
        self.false_positives = self.add_variable(shape, "zeros", name="false_positives")
        self.false_negatives = self.add_variable(shape, "zeros", name="false_negatives")

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        k = self.num_classes
        true = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), k, dtype=self.dtype)
        pred = ops.one_hot(ops.argmax(ops.reshape(y_pred, (-1, k)), axis=-1), k,
                           dtype=self.dtype)
        w = 1.0 if sample_weight is None else ops.reshape(ops.cast(sample_weight, self.dtype),
                                                          (-1, 1))
        tp = ops.sum(w * true * pred, axis=0)
        self.true_positives.assign(self.true_positives + tp)
        self.false_positives.assign(self.false_positives + ops.sum(w * pred, axis=0) - tp)
        self.false_negatives.assign(self.false_negatives + ops.sum(w * true, axis=0) - tp)

    def result(self):
        tp, fp, fn = self.true_positives, self.false_positives, self.false_negatives
        denominator = 2 * tp + fp + fn
        occurs = ops.cast(denominator > 0, self.dtype)
        f1 = ops.divide_no_nan(2 * tp, denominator)
        return ops.divide_no_nan(ops.sum(f1 * occurs), ops.sum(occurs))

    def reset_state(self) -> None:
        for v in (self.true_positives, self.false_positives, self.false_negatives):
            v.assign(ops.zeros(v.shape, dtype=v.dtype))

    def get_config(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "name": self.name, "dtype": self.dtype}


def task_metrics(kind: str, num_classes: int | None = None) -> list[keras.metrics.Metric]:
    """The metrics of a task kind (``binary``, ``multiclass``, ``regression``), named
    ``accuracy``/``auc``, ``accuracy``/``macro_f1`` and ``mae``/``rmse``."""
    if kind == "binary":
        return [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")]
    if kind == "multiclass":
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                MacroF1(num_classes, name="macro_f1")]
    return [keras.metrics.MeanAbsoluteError(name="mae"),
            keras.metrics.RootMeanSquaredError(name="rmse")]
