"""The DQN's two custom layers, registered for ``.keras`` save/load."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tfprod")
class DuelingHead(keras.layers.Layer):
    """Q-values from a value stream and an advantage stream (Wang et al., 2016).

    ``Q(s, a) = V(s) + A(s, a) - mean_a A(s, a)``: subtracting the mean makes V and A
    identifiable, so the value of a state is learned from every action taken in it.

    Args:
        n_actions: number of actions.
    """

    def __init__(self, n_actions: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n_actions = int(n_actions)
        self.value = keras.layers.Dense(1, name="value")
        self.advantage = keras.layers.Dense(self.n_actions, name="advantage")

    def build(self, input_shape) -> None:
        self.value.build(input_shape)
        self.advantage.build(input_shape)

    def call(self, inputs):
        a = self.advantage(inputs)
        return self.value(inputs) + a - ops.mean(a, axis=-1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.n_actions)

    def get_config(self) -> dict:
        return {**super().get_config(), "n_actions": self.n_actions}


@keras.saving.register_keras_serializable(package="tfprod")
class GreedyAction(keras.layers.Layer):
    """The greedy action of each row of Q-values, as int64 (``start`` + argmax).

    Args:
        start: the Discrete action space's ``start``.
    """

    def __init__(self, start: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.start = int(start)

    def call(self, q_values):
        return ops.cast(ops.argmax(q_values, axis=-1), "int64") + self.start

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])

    def compute_output_spec(self, q_values):
        return keras.KerasTensor(q_values.shape[:-1], dtype="int64")

    def get_config(self) -> dict:
        return {**super().get_config(), "start": self.start}
