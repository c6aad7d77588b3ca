"""A regression loss at unit scale whatever the label's units.

A model that answers in the label's units (dollars, mmol/L) has errors in those units: a plain
mean squared error is then thousands for a target whose spread is ~50, gradients are that much
larger, and gradient clipping or a learning rate tuned at unit scale misbehave. Divided by the
training targets' variance, the loss is ~1 for a model that predicts the mean, whatever the
units; MAE and RMSE stay in the label's units as metrics.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tfprod")
class ScaledMeanSquaredError(keras.losses.Loss):
    """Mean squared error divided by ``scale ** 2`` (the training targets' variance).

    Args:
        scale: the standard deviation of the training targets, in the label's units.

    Example:

    >>> loss = ScaledMeanSquaredError(scale=50.0)
    >>> float(loss([[100.0]], [[150.0]]))   # one standard deviation off
    1.0
    """

    def __init__(self, scale: float = 1.0, name: str = "scaled_mean_squared_error",
                 reduction: str = "sum_over_batch_size", dtype: Any = None) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.scale = float(scale)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        error = (y_pred - ops.cast(y_true, y_pred.dtype)) / self.scale
        return ops.mean(ops.square(error), axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {"scale": self.scale, "name": self.name, "reduction": self.reduction,
                "dtype": self.dtype}
