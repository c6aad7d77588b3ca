"""``QLearner``: the online and target networks, the optimizer, and the training phase as one
``tf.function``.

A training phase is ``K`` gradient steps on ``K`` minibatches sampled up front (the target
network does not change within a phase: it is updated between env steps). The phase runs as one
traced loop, so the Python and dispatch cost is paid once per phase, not once per step; with
prioritized replay, priorities change after every step, so the agent runs phases of one step.

The loss is the Huber loss of the TD error (delta 1): quadratic near zero, linear beyond, so a
single large error (an early bootstrap from an untrained target, a rare big reward) moves the
weights by a bounded amount instead of the squared error's unbounded one; the gradient's global
norm is clipped as well.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf


def huber(x: tf.Tensor, delta: float = 1.0) -> tf.Tensor:
    """Elementwise Huber loss."""
    a = tf.abs(x)
    return tf.where(a <= delta, 0.5 * tf.square(x), delta * (a - 0.5 * delta))


class QLearner:
    """Double-DQN updates of ``online`` towards ``target``.

    Args:
        online: the Q-network being trained.
        learning_rate: Adam's learning rate.
        max_grad_norm: global-norm clip of the gradients.
        double: double DQN targets; False: the target network's max.
        jit_compile: compile the training phase with XLA.
    """

    def __init__(self, online: keras.Model, *, learning_rate: float, max_grad_norm: float,
                 double: bool = True, jit_compile: bool = False) -> None:
        self.online = online
        self.target = keras.models.clone_model(online)
        self.target.set_weights(online.get_weights())
        self.optimizer = keras.optimizers.Adam(learning_rate)
        self.optimizer.build(online.trainable_variables)
        self.max_grad_norm = float(max_grad_norm)
        self.double = double
        obs = online.inputs[0]
        obs_spec = tf.TensorSpec([None, None, *obs.shape[1:]], obs.dtype)
        batch = lambda dtype: tf.TensorSpec([None, None], dtype)  # noqa: E731
        self._phase = tf.function(self._train_phase, jit_compile=jit_compile, input_signature=[
            obs_spec, batch(tf.int32), batch(tf.float32), obs_spec, batch(tf.float32),
            batch(tf.float32)])
        self._update_target = tf.function(self._sync, input_signature=[
            tf.TensorSpec([], tf.float32)])

    def _targets(self, reward, next_obs, discount):
        next_target = self.target(next_obs, training=False)
        if self.double:
            best = tf.argmax(self.online(next_obs, training=False), axis=-1)
            next_value = tf.gather(next_target, best, batch_dims=1)
        else:
            next_value = tf.reduce_max(next_target, axis=-1)
        return reward + discount * next_value

    def _train_phase(self, obs, action, reward, next_obs, discount, weights):
        steps = tf.shape(action)[0]
        losses = tf.TensorArray(tf.float32, size=steps)
        q_means = tf.TensorArray(tf.float32, size=steps)
        errors = tf.TensorArray(tf.float32, size=steps)
        variables = self.online.trainable_variables
        for k in tf.range(steps):
            y = tf.stop_gradient(self._targets(reward[k], next_obs[k], discount[k]))
            with tf.GradientTape() as tape:
                q = self.online(obs[k], training=True)
                q_taken = tf.gather(q, action[k], batch_dims=1)
                td = q_taken - y
                loss = tf.reduce_mean(weights[k] * huber(td))
            grads = tape.gradient(loss, variables)
            grads, _ = tf.clip_by_global_norm(grads, self.max_grad_norm)
            self.optimizer.apply_gradients(zip(grads, variables, strict=True))
            losses = losses.write(k, loss)
            q_means = q_means.write(k, tf.reduce_mean(q_taken))
            errors = errors.write(k, td)
        return losses.stack(), q_means.stack(), errors.stack()

    def train(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``K`` gradient steps on a batch shaped ``(K, B, ...)`` (see ``ReplayBuffer.sample``).

        Returns per-step losses and mean Q of the taken actions (shape ``(K,)``) and the TD
        errors (``(K, B)``).
        """
        loss, q_mean, td = self._phase(
            batch["obs"], batch["action"].astype(np.int32), batch["reward"], batch["next_obs"],
            batch["discount"], batch["weights"])
        return loss.numpy(), q_mean.numpy(), td.numpy()

    def _sync(self, tau):
        for t, o in zip(self.target.weights, self.online.weights, strict=True):
            t.assign(tau * o + (1.0 - tau) * t)

    def update_target(self, tau: float = 1.0) -> None:
        """``target <- tau * online + (1 - tau) * target`` (1.0: copy)."""
        if tau >= 1.0:
            for t, o in zip(self.target.weights, self.online.weights, strict=True):
                t.assign(o)
        else:
            self._update_target(tf.constant(tau, tf.float32))

    def state(self) -> dict[str, Any]:
        """Weights of both networks and the optimizer's variables, as numpy arrays."""
        return {"online": [np.array(v) for v in self.online.weights],
                "target": [np.array(v) for v in self.target.weights],
                "optimizer": [np.array(v) for v in self.optimizer.variables]}

    def load_state(self, state: dict[str, Any]) -> None:
        for key, variables in (("online", self.online.weights), ("target", self.target.weights),
                               ("optimizer", self.optimizer.variables)):
            for v, value in zip(variables, state[key], strict=True):
                v.assign(value)

