"""``Learner``: incremental updates of a compiled Keras model, and the naive baseline
``FineTune``.

A learner takes examples as ``(x, y)`` with ``x`` a dict of the serving signature's inputs
(``{"pixels": [n, 64]}``; what the request log holds) and trains the model on them with
:class:`tfprod.train.Trainer`, so any tf.distribute strategy works. Subclasses add what keeps
old knowledge: a replay buffer (:mod:`.replay`), a quadratic anchor (:mod:`.ewc`), a teacher
(:mod:`.lwf`). :meth:`Learner.consolidate` marks "what the model knows now should be kept"
(computed once per call, never per step); :meth:`Learner.state` / :meth:`Learner.load_state`
carry everything beyond the model's weights and optimizer (which :meth:`save` writes as a
``.keras`` file), so a restarted loop resumes exactly.
"""

from __future__ import annotations

import os
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfprod.errors import TfprodError
from tfprod.export.signature import serving_inputs
from tfprod.train import Trainer

STRATEGIES = ("finetune", "replay", "ewc", "lwf")


class Learner:
    """Fine-tunes ``model`` on each new batch of examples (the naive baseline: it forgets).

    Args:
        model: a compiled Keras model (sparse integer labels).
        batch_size: examples per gradient step.
        epochs: passes over each new batch of examples.
        seed: seeds shuffling (and the buffer of subclasses).
        strategy: a ``tf.distribute.Strategy`` for the :class:`~tfprod.train.Trainer`.
    """

    name = "finetune"

    def __init__(self, model: keras.Model, *, batch_size: int = 32, epochs: int = 1,
                 seed: int = 0, strategy: tf.distribute.Strategy | None = None):
        if getattr(model, "optimizer", None) is None:
            raise TfprodError(f"model {model.name!r} is not compiled; call model.compile("
                              "optimizer=..., loss=...) first")
        if batch_size < 1 or epochs < 1:
            raise TfprodError(f"batch_size={batch_size}, epochs={epochs}; expected both >= 1")
        self.model = model
        self.inputs = serving_inputs(model)
        self.batch_size, self.epochs, self.seed = batch_size, epochs, seed
        self.rng = np.random.default_rng(seed)
        self.classes = int(model.outputs[0].shape[-1]) if model.outputs else 0
        self.trainer = Trainer(model, strategy=strategy, penalty=self.penalty())
        self.steps = 0

    # ------------------------------------------------------------------------ hooks

    def penalty(self) -> Any:
        """``penalty(x, y_pred)`` added to the loss, or None (see ``Trainer(penalty=...)``)."""
        return None

    def training_set(self, x: dict[str, np.ndarray], y: np.ndarray
                     ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """What one update trains on, given the new examples (replay mixes in old ones)."""
        return x, y

    def after_update(self, x: dict[str, np.ndarray], y: np.ndarray) -> None:
        """Called after the model learned the new examples (replay stores them)."""

    def consolidate(self, x: dict[str, np.ndarray], y: np.ndarray) -> None:
        """Keep what the model knows now on ``(x, y)`` (EWC's Fisher, LwF's teacher)."""

    # ------------------------------------------------------------------------ learning

    def check(self, x: dict[str, np.ndarray], y: np.ndarray) -> np.ndarray:
        """The labels as class indices; a clear error for inputs or labels that do not fit."""
        missing = [n for n in self.inputs.names if n not in x]
        if missing:
            raise TfprodError(f"examples have inputs {sorted(x)}; the model takes "
                              f"{list(self.inputs.names)} (missing {missing})")
        for name, spec in zip(self.inputs.names, self.inputs.specs, strict=True):
            shape = tuple(np.shape(x[name])[1:])
            want = tuple(spec.shape[1:])
            if len(shape) != len(want) or any(w is not None and w != s
                                              for s, w in zip(shape, want, strict=True)):
                raise TfprodError(f"input {name!r} has examples of shape {shape}; the model "
                                  f"takes {want}")
        y = np.asarray(y)
        if y.dtype.kind not in "iuf" or (y.dtype.kind == "f" and (
                not np.all(np.isfinite(y)) or np.any(y != np.round(y)))):
            bad = y[:3].tolist()
            raise TfprodError(f"labels {bad} are not class indices; the model "
                              f"{self.model.name!r} takes integer labels 0..{self.classes - 1}")
        y = y.astype(np.int64).reshape(-1)
        out = (y < 0) | (y >= self.classes)
        if out.any():
            raise TfprodError(f"label {int(y[out][0])} is out of the class range 0.."
                              f"{self.classes - 1} of model {self.model.name!r} ({int(out.sum())}"
                              " such labels); fix the feedback or drop those examples")
        return y

    def _dataset(self, x: dict[str, np.ndarray], y: np.ndarray) -> tf.data.Dataset:
        order = self.rng.permutation(len(y))
        model_x = self.inputs.structure([x[n][order] for n in self.inputs.names])
        return tf.data.Dataset.from_tensor_slices((model_x, y[order])).batch(self.batch_size)

    def learn(self, x: dict[str, np.ndarray], y: np.ndarray, *, epochs: int | None = None
              ) -> float:
        """One update on the new examples ``(x, y)``; returns the last epoch's mean loss."""
        y = self.check(x, y)
        if len(y) == 0:
            return float("nan")
        tx, ty = self.training_set(x, y)
        loss = float("nan")
        for _ in range(epochs or self.epochs):
            history = self.trainer.fit(self._dataset(tx, ty), epochs=1)
            loss = float(history.history["loss"][-1])
            self.steps += -(-len(ty) // self.batch_size)
        self.after_update(x, y)
        return loss

    def predict(self, x: dict[str, np.ndarray], batch_size: int = 256) -> np.ndarray:
        """The model's first output on ``x``."""
        parts = []
        n = len(next(iter(x.values())))
        for start in range(0, n, batch_size):
            model_x = self.inputs.structure([x[k][start:start + batch_size]
                                             for k in self.inputs.names])
            out = self.model(model_x, training=False)
            out = out[0] if isinstance(out, list | tuple) else (
                next(iter(out.values())) if isinstance(out, dict) else out)
            parts.append(keras.ops.convert_to_numpy(out))
        return np.concatenate(parts) if parts else np.zeros((0, self.classes), np.float32)

    # ------------------------------------------------------------------------ state

    def state(self) -> dict[str, np.ndarray]:
        """Everything beyond the model's weights and optimizer, as arrays."""
        return {"learner/rng": np.frombuffer(
            repr(self.rng.bit_generator.state).encode(), np.uint8),
            "learner/steps": np.asarray(self.steps)}

    def load_state(self, arrays: dict[str, Any]) -> None:
        import ast

        self.rng.bit_generator.state = ast.literal_eval(
            bytes(np.asarray(arrays["learner/rng"], np.uint8)).decode())
        self.steps = int(arrays["learner/steps"])

    def save(self, folder: str | os.PathLike) -> None:
        """``folder/model.keras`` (weights and optimizer) and ``folder/learner.npz``."""
        folder = os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        self.model.save(os.path.join(folder, "model.keras"))
        np.savez(os.path.join(folder, "learner.npz"), **self.state())

    def restore(self, folder: str | os.PathLike) -> None:
        """Load what :meth:`save` wrote (weights, optimizer state, learner state)."""
        folder = os.fspath(folder)
        saved = keras.saving.load_model(os.path.join(folder, "model.keras"))
        self.model.set_weights(saved.get_weights())
        if saved.optimizer is not None and self.model.optimizer is not None:
            if not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)
            for mine, theirs in zip(self.model.optimizer.variables, saved.optimizer.variables,
                                    strict=False):
                mine.assign(theirs)
        with np.load(os.path.join(folder, "learner.npz"), allow_pickle=False) as z:
            self.load_state({k: z[k] for k in z.files})


class FineTune(Learner):
    """The naive baseline: train on the new examples only."""
