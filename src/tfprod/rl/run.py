"""``RunFolder``: the files of one DQN run.

::

    RUN/run.json            environment, seed, config, observation/action spec
    RUN/checkpoints/        the latest checkpoint (see tfprod.rl.checkpoint)
    RUN/tensorboard/        scalars: episode return, loss, mean Q, epsilon, steps/s, evaluations
    RUN/best.keras          the Q-network with the kept (best-evaluated) weights
    RUN/final.keras         the Q-network at the last step
    RUN/result.json         the final evaluation and run figures
    RUN/history.json        every training episode and evaluation
    RUN/learning_curve.png  episode return vs env steps, with the evaluations
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tfprod.errors import TfprodError

META = "run.json"
BEST = "best.keras"
FINAL = "final.keras"


class ScalarWriter:
    """TensorBoard scalars through ``tf.summary`` (ordinary event files)."""

    def __init__(self, logdir: Path) -> None:
        import tensorflow as tf

        self._tf = tf
        self._writer = tf.summary.create_file_writer(str(logdir))

    def scalar(self, name: str, value: float, step: int) -> None:
        with self._writer.as_default():
            self._tf.summary.scalar(name, value, step=int(step))

    def flush(self) -> None:
        self._writer.flush()


class RunFolder:
    """Paths and small files of a run folder (created on first write)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise TfprodError(f"{self.path} is a file; expected a run folder")

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def exists(self) -> bool:
        return (self.path / META).is_file()

    def writer(self) -> ScalarWriter:
        return ScalarWriter(self.path / "tensorboard")

    def write_json(self, name: str, payload: dict[str, Any]) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(json.dumps(payload, indent=2))
        os.replace(tmp, self.path / name)
        return self.path / name

    def read_json(self, name: str) -> dict[str, Any]:
        path = self.path / name
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise TfprodError(f"{self.path} has no {name}; expected a run folder written by "
                              "`tfprod rl train`") from None
        except ValueError as e:
            raise TfprodError(f"{path} is not valid JSON ({e})") from None

    def read_meta(self) -> dict[str, Any]:
        if not self.path.is_dir():
            raise TfprodError(f"{self.path}: no such run folder; expected the --out folder of "
                              "`tfprod rl train`")
        return self.read_json(META)

    def write_models(self, q_network: Any, best_weights: list) -> None:
        """``final.keras`` (current weights) and ``best.keras`` (the kept ones)."""
        import keras

        self.path.mkdir(parents=True, exist_ok=True)
        q_network.save(self.path / FINAL)
        best = keras.models.clone_model(q_network)
        best.set_weights(best_weights)
        best.save(self.path / BEST)

    def model_path(self, which: str = "best") -> Path:
        """``best.keras`` or ``final.keras``; raises if the run has not written it yet."""
        if which not in ("best", "final"):
            raise TfprodError(f"which={which!r}; expected 'best' (the kept weights) or 'final'")
        path = self.path / (BEST if which == "best" else FINAL)
        if not path.is_file():
            raise TfprodError(f"{self.path} has no {path.name}; the run has not finished: "
                              "resume it with `tfprod rl train --resume`")
        return path

    def load_model(self, which: str = "best") -> Any:
        """The run's Q-network (``best`` or ``final``)."""
        import keras

        import tfprod.rl.layers  # noqa: F401 - registers DuelingHead / GreedyAction

        return keras.saving.load_model(self.model_path(which))
