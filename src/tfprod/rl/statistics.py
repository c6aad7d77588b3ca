"""``RunningStats``: exact running mean and variance of observations, in numpy."""

from __future__ import annotations

import numpy as np


class RunningStats:
    """Count, mean and sum of squared deviations (``m2``) of every row seen, per feature.

    Batches are merged with Chan et al.'s parallel update: exact, and stable where a running
    sum of squares would cancel. The three values are the weights of
    :class:`tfprod.models.RunningMeanNormalization`, so the network normalizes with them.
    """

    def __init__(self, features: int) -> None:
        self.count = 0.0
        self.mean = np.zeros(features, np.float64)
        self.m2 = np.zeros(features, np.float64)

    def update(self, batch: np.ndarray) -> None:
        x = np.asarray(batch, np.float64).reshape(len(batch), -1)
        n = float(len(x))
        mean = x.mean(axis=0)
        m2 = ((x - mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = mean - self.mean
        self.m2 += m2 + delta ** 2 * self.count * n / total
        self.mean += delta * n / total
        self.count = total

    def weights(self) -> list[np.ndarray]:
        """``[count, mean, m2]`` as float32, the layer's weights."""
        return [np.float32(self.count), self.mean.astype(np.float32),
                self.m2.astype(np.float32)]
