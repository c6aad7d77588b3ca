"""``Target``: the last layer of a model trained on the user's labels, saying what it predicts.

It passes its input through unchanged and carries the :class:`~tfprod.data.task.LabelTask` in
its config: the label's name, the task, the class values in output order (``"red"``,
``"green"``; or class codes such as ``1..3``) and the target's statistics. It travels inside
the ``.keras`` file, so every later stage reads the task from the model alone: ``tfprod
export`` adds a ``classes`` output with the class names, ``doctor`` / ``optimize`` /
``predict`` turn raw labels into what the loss takes and outputs into label values.

Example::

    outputs = Target(task.to_json(), name="probabilities")(class_scores)
    find_task(keras.saving.load_model("model.keras")).classes   # ('red', 'green', 'blue')
"""

from __future__ import annotations

from typing import Any

import keras

from tfprod.data.task import LabelTask


@keras.saving.register_keras_serializable(package="tfprod")
class Target(keras.layers.Layer):
    """Identity on the model's output; its config is the task the output answers.

    Args:
        task: a :class:`LabelTask` as ``LabelTask.to_json()`` (a plain dict, so that it saves).
        held_out: the hashed ``validation_split`` of its training data that the model was not
            trained on (set by ``tfprod train``), so that ``tfprod optimize`` can test on
            those rows; ``None`` when unknown.
    """

    def __init__(self, task: dict[str, Any], held_out: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.task_config = dict(task)
        self.task = LabelTask.from_json(self.task_config)  # checks it
        self.held_out = held_out

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "task": self.task_config, "held_out": self.held_out}


def find_target(model: keras.Model) -> Target | None:
    """The model's :class:`Target` layer when it has exactly one, else ``None``."""
    found = [layer for layer in getattr(model, "layers", []) if isinstance(layer, Target)]
    return found[0] if len(found) == 1 else None


def find_task(model: keras.Model) -> LabelTask | None:
    """The task a model was trained for, read from its :class:`Target` layer (or ``None``)."""
    target = find_target(model)
    return None if target is None else target.task
