"""What an exported model predicts, for models trained on the user's labels.

A model with a :class:`~tfprod.models.target.Target` layer knows its task. Its export then:

- adds a ``classes`` output to ``serving_default`` for classifiers: the predicted class as the
  user wrote it in the labels (``"barolo"``; or the class code, int64), picked from the class
  values inside the SavedModel, so a client needs no mapping of its own. Regression models
  already answer in the label's units (their head ends in ``Normalization(invert=True)``);
- writes ``assets.extra/tfprod/task.json`` (``LabelTask.to_json()``: the label's name, the task,
  the classes), which ``tfprod predict`` reads to name the classes of a SavedModel.
"""

from __future__ import annotations

import json
import os
from typing import Any

import tensorflow as tf

from tfprod.data.task import LabelTask

CLASSES_OUTPUT = "classes"
TASK_FILE = os.path.join("assets.extra", "tfprod", "task.json")


def class_values(task: LabelTask) -> tf.Tensor:
    """The classes in output order, as a constant (strings, or int64 class codes)."""
    if task.string_classes:
        return tf.constant([str(c) for c in task.classes], tf.string)
    return tf.constant([int(c) for c in task.classes], tf.int64)


def predicted_classes(task: LabelTask, scores: Any) -> tf.Tensor:
    """The predicted class of each example, from a classifier's output (``[batch, k]``
    probabilities, or ``[batch, 1]`` for a binary one)."""
    if task.kind == "binary":
        index = tf.cast(tf.reshape(scores, [-1]) >= 0.5, tf.int64)
    else:
        index = tf.argmax(scores, axis=-1)
    return tf.gather(class_values(task), index)


def write_task(version_dir: str | os.PathLike, task: LabelTask) -> str:
    """Writes ``task`` to ``<version_dir>/assets.extra/tfprod/task.json``."""
    path = os.path.join(os.fspath(version_dir), TASK_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(task.to_json(), f, indent=1)
    return path


def load_task(version_dir: str | os.PathLike) -> LabelTask | None:
    """The task saved in an exported version, or ``None`` (a model without a Target layer)."""
    path = os.path.join(os.fspath(version_dir), TASK_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return LabelTask.from_json(json.load(f))
