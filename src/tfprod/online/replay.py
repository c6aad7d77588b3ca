"""``Replay``: experience replay from a bounded reservoir of past examples.

Each update trains on the new examples mixed with ``replay_ratio`` times as many examples
drawn from the buffer; the new examples enter the buffer afterwards. Class-incremental
benchmarks (van de Ven & Tolias 2019) find replay the one family that keeps old classes in a
single-head model; see docs/benchmarks.md for tfprod's figures on split digits.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tfprod.errors import TfprodError
from tfprod.online.buffer import ReservoirBuffer
from tfprod.online.learner import Learner


class Replay(Learner):
    """Fine-tuning with experience replay.

    Args:
        model: a compiled Keras model.
        buffer_size: examples the buffer keeps.
        replay_ratio: replayed examples per new example in each update.
        balanced: class-balanced eviction (see :class:`ReservoirBuffer`).
        **kwargs: batch_size, epochs, seed, strategy (see :class:`Learner`).
    """

    name = "replay"

    def __init__(self, model: keras.Model, *, buffer_size: int = 500, replay_ratio: float = 1.0,
                 balanced: bool = False, **kwargs: Any):
        super().__init__(model, **kwargs)
        if not replay_ratio >= 0:
            raise TfprodError(f"replay_ratio={replay_ratio}; expected a number >= 0")
        self.replay_ratio = replay_ratio
        self.buffer = ReservoirBuffer(buffer_size, balanced=balanced, seed=self.seed)

    def training_set(self, x: dict[str, np.ndarray], y: np.ndarray
                     ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        n = int(round(len(y) * self.replay_ratio))
        if not len(self.buffer) or n == 0:
            return x, y
        old_x, old_y = self.buffer.sample(n)
        return ({k: np.concatenate([x[k], old_x[k].astype(x[k].dtype)]) for k in x},
                np.concatenate([y, old_y.astype(y.dtype)]))

    def after_update(self, x: dict[str, np.ndarray], y: np.ndarray) -> None:
        self.buffer.add({k: x[k] for k in self.inputs.names}, y)

    def state(self) -> dict[str, np.ndarray]:
        return {**super().state(), **self.buffer.state()}

    def load_state(self, arrays: dict[str, Any]) -> None:
        super().load_state(arrays)
        self.buffer.load_state(arrays)
