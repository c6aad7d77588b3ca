"""Training checkpoints: model + optimizer + global step (+ data iterator) with rotation.

Built on ``tf.train.Checkpoint`` / ``tf.train.CheckpointManager``: writes are atomic (TF writes
to a temporary name and renames), old checkpoints rotate out, and a checkpoint from another
architecture is refused with the mismatch named.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from tfprod.errors import TfprodError


class TrainingCheckpoint:
    """Saves and restores everything needed to continue a run exactly where it stopped.

    Args:
        directory: where checkpoints go (created if missing).
        model: the Keras model (its variables).
        optimizer: its optimizer (slots such as Adam's moments, and ``iterations``).
        max_to_keep: checkpoints kept on disk.
    """

    def __init__(self, directory: str | os.PathLike, model: keras.Model,
                 optimizer: keras.optimizers.Optimizer, *, max_to_keep: int = 3) -> None:
        self.directory = os.fspath(directory)
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise TfprodError(f"checkpoint_dir {self.directory} is a file; expected a folder")
        os.makedirs(self.directory, exist_ok=True)
        self.model = model
        self.optimizer = optimizer
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.max_to_keep = max_to_keep
        self._iterator = None
        self._manager = None

    def attach_iterator(self, iterator) -> None:
        """Tracks a tf.data iterator too, so a resumed run sees exactly the remaining data."""
        self._iterator = iterator
        self._manager = None

    def _checkpoint(self) -> tf.train.Checkpoint:
        parts = {"model": self.model, "optimizer": self.optimizer, "step": self.step}
        # The states of the model's random generators (Dropout, noise and augmentation layers):
        # tf.train.Checkpoint(model=...) does not reach a Keras 3 SeedGenerator, so a resumed
        # run would otherwise draw other dropout masks than the run it continues.
        seeds = [v.value for v in self.model.variables
                 if v.path.rsplit("/", 1)[-1] == "seed_generator_state"]
        if seeds:
            parts["seed_generators"] = seeds
        if self._iterator is not None:
            parts["iterator"] = self._iterator
        return tf.train.Checkpoint(**parts)

    @property
    def manager(self) -> tf.train.CheckpointManager:
        if self._manager is None:
            self._manager = tf.train.CheckpointManager(
                self._checkpoint(), self.directory, max_to_keep=self.max_to_keep)
        return self._manager

    def save(self) -> str:
        return self.manager.save(checkpoint_number=int(self.step.numpy()))

    @property
    def latest(self) -> str | None:
        return tf.train.latest_checkpoint(self.directory)

    def restore_latest(self) -> int | None:
        """Restores the latest checkpoint; returns its global step, or None if there is none."""
        path = self.latest
        if path is None:
            return None
        try:
            status = self.manager.checkpoint.restore(path)
            status.assert_existing_objects_matched()
        except (ValueError, AssertionError, tf.errors.OpError) as e:
            detail = " ".join(str(e).split())[:300]
            raise TfprodError(
                f"checkpoint {path} does not fit this model ({detail}); it was written by "
                "another architecture: use a fresh --checkpoint-dir or the original model"
            ) from None
        return int(self.step.numpy())
