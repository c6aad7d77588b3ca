"""The Q-network (Keras 3) and :class:`NumpyQ`, its copy for acting without TensorFlow.

Acting needs Q-values for one observation per env per step. Calling a Keras model or even a
``tf.function`` at batch 1 costs TensorFlow's per-call overhead (tens of microseconds to
milliseconds, see ``benchmarks/rl.py``), far more than the arithmetic of a small MLP. The agent
therefore acts with :class:`NumpyQ`, a numpy copy of the network's weights refreshed after each
training phase; an equivalence test holds it to the Keras model's outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from tfprod.errors import TfprodError
from tfprod.models.layers import RunningMeanNormalization
from tfprod.rl.envs import EnvSpec
from tfprod.rl.layers import DuelingHead, GreedyAction


def build_q_network(spec: EnvSpec, *, hidden: Sequence[int] = (256, 256), torso: str = "mlp",
                    dueling: bool = False, normalize_observations: bool = False,
                    name: str = "q_network") -> keras.Model:
    """A functional Q-network: observation -> one Q-value per action.

    Args:
        spec: the environment (:func:`tfprod.rl.envs.env_spec`).
        hidden: widths of the ReLU layers (after the convolutions for ``torso="cnn"``).
        torso: ``"mlp"`` for vectors; ``"cnn"`` for HxWxC images (Mnih et al.'s three
            convolutions; uint8 pixels are scaled to [0, 1] inside).
        dueling: a :class:`DuelingHead` instead of one linear layer.
        normalize_observations: a :class:`~tfprod.models.RunningMeanNormalization` first,
            whose statistics the agent sets from the observations it collects.
    """
    inputs = keras.Input(spec.observation_shape, dtype=spec.observation_dtype,
                         name="observation")
    x = inputs
    if torso == "cnn":
        x = keras.layers.Rescaling(1 / 255.0, name="pixels")(x)
        for i, (filters, kernel, stride) in enumerate([(32, 8, 4), (64, 4, 2), (64, 3, 1)]):
            x = keras.layers.Conv2D(filters, kernel, stride, padding="same", activation="relu",
                                    name=f"conv_{i}")(x)
    elif torso != "mlp":
        raise TfprodError(f"torso={torso!r}; expected 'mlp' or 'cnn'")
    if len(x.shape) > 2:
        x = keras.layers.Flatten(name="flatten")(x)
    if normalize_observations:
        x = RunningMeanNormalization(name="observation_norm")(x)
    for i, width in enumerate(hidden):
        x = keras.layers.Dense(width, activation="relu", name=f"hidden_{i}")(x)
    if dueling:
        q = DuelingHead(spec.n_actions, name="q")(x)
    else:
        q = keras.layers.Dense(spec.n_actions, name="q")(x)
    return keras.Model(inputs, q, name=name)


def policy_model(q_network: keras.Model, spec: EnvSpec) -> keras.Model:
    """The served policy: ``observation`` -> ``q_values`` and the greedy ``action`` (int64)."""
    inputs = keras.Input(spec.observation_shape, dtype=spec.observation_dtype,
                         name="observation")
    q = keras.layers.Identity(name="q_values")(q_network(inputs))
    action = GreedyAction(spec.action_start, name="action")(q)
    return keras.Model(inputs, {"q_values": q, "action": action}, name="policy")


class NumpyQ:
    """The Q-network's forward pass in numpy (MLP torsos; see the module docstring).

    Build it with :meth:`from_model` and call :meth:`refresh` after the weights change.
    """

    SUPPORTED = (keras.layers.InputLayer, keras.layers.Flatten, keras.layers.Dense,
                 RunningMeanNormalization, DuelingHead)

    def __init__(self, model: keras.Model) -> None:
        unsupported = [type(layer).__name__ for layer in model.layers
                       if not isinstance(layer, self.SUPPORTED)]
        if unsupported:
            raise TfprodError(f"NumpyQ runs Dense / Flatten / normalization / dueling layers; "
                              f"the model has {', '.join(unsupported)}")
        self.model = model
        self.ops: list[tuple[str, tuple[np.ndarray, ...]]] = []
        self.refresh()

    @classmethod
    def supports(cls, model: keras.Model) -> bool:
        return all(isinstance(layer, cls.SUPPORTED) for layer in model.layers)

    def refresh(self) -> None:
        """Copies the model's current weights."""
        ops = []
        for layer in self.model.layers:
            if isinstance(layer, keras.layers.Flatten):
                ops.append(("flatten", ()))
            elif isinstance(layer, RunningMeanNormalization):
                count, mean, m2 = (np.asarray(v, np.float32) for v in layer.get_weights())
                var = m2 / max(float(count), 1.0) if count > 0 else np.ones_like(m2)
                ops.append(("norm", (mean, 1.0 / np.sqrt(var + layer.epsilon))))
            elif isinstance(layer, keras.layers.Dense):
                kernel, bias = layer.get_weights()
                relu = layer.activation is keras.activations.relu
                ops.append(("relu" if relu else "linear", (kernel, bias)))
            elif isinstance(layer, DuelingHead):
                v_kernel, v_bias = layer.value.get_weights()
                a_kernel, a_bias = layer.advantage.get_weights()
                ops.append(("dueling", (np.concatenate([v_kernel, a_kernel], axis=1),
                                        np.concatenate([v_bias, a_bias]))))
        self.ops = ops

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Q-values, shape ``(batch, n_actions)``, for a batch of observations."""
        x = np.asarray(obs, np.float32)
        for kind, w in self.ops:
            if kind == "flatten":
                x = x.reshape(len(x), -1)
            elif kind == "norm":
                x = (x - w[0]) * w[1]
            elif kind == "relu":
                x = np.maximum(x @ w[0] + w[1], 0.0)
            elif kind == "linear":
                x = x @ w[0] + w[1]
            else:  # dueling: one matmul for both streams
                va = x @ w[0] + w[1]
                a = va[:, 1:]
                x = va[:, :1] + a - a.mean(axis=1, keepdims=True)
        return x


class GraphQ:
    """Q-values through one traced ``tf.function`` (for torsos :class:`NumpyQ` does not run)."""

    def __init__(self, model: keras.Model) -> None:
        import tensorflow as tf

        self.model = model
        spec = tf.TensorSpec([None, *model.input_shape[1:]], model.inputs[0].dtype)
        self._fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])

    def refresh(self) -> None:
        """Nothing to copy: the function reads the variables."""

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self._fn(obs).numpy()


def make_actor(model: keras.Model) -> NumpyQ | GraphQ:
    """:class:`NumpyQ` where it runs the model, else :class:`GraphQ`."""
    return NumpyQ(model) if NumpyQ.supports(model) else GraphQ(model)
