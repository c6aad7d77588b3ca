"""Preset Keras 3 models. Preprocessing (rescaling) lives inside, so serving needs none."""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras

from tfprod.errors import TfprodError

if TYPE_CHECKING:
    from tfprod.data.task import LabelTask


def _finish(inputs, x, name: str, num_classes: int, task: LabelTask | None,
            learning_rate: float) -> keras.Model:
    """The output head and compilation: ``task``'s (see :mod:`tfprod.models.heads`), or a
    ``num_classes`` softmax with sparse cross-entropy and accuracy."""
    if task is not None:
        from tfprod.models.heads import compile_for_task, task_head

        return compile_for_task(keras.Model(inputs, task_head(x, task), name=name), task,
                                learning_rate=learning_rate)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name=name)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def small_cnn(
    input_shape: tuple[int, int, int] = (32, 32, 1),
    num_classes: int = 10,
    *,
    filters: int = 32,
    dense: int = 32,
    dropout: float = 0.25,
    learning_rate: float = 1e-3,
    task: LabelTask | None = None,
) -> keras.Model:
    """A compiled two-block CNN for small images with values in [0, 255].

    Args:
        input_shape: (height, width, channels) of one image.
        num_classes: softmax outputs.
        filters: filters of the first block (the second has twice as many).
        dense: units of the hidden dense layer.
        dropout: dropout rate before it.
        learning_rate: Adam's learning rate.
        task: the task read from the labels (:func:`tfprod.data.task.infer_task`); it sets
            the head, loss and metrics instead of ``num_classes`` (see
            :mod:`tfprod.models.heads`).

    Returns:
        A model compiled with sparse categorical cross-entropy and accuracy (or the task's).
    """
    if len(input_shape) != 3:
        raise TfprodError(f"input_shape={input_shape}; expected (height, width, channels)")
    if task is None and num_classes < 2:
        raise TfprodError(f"num_classes={num_classes}; expected at least 2")
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    for f in (filters, 2 * filters):
        x = keras.layers.Conv2D(f, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(dropout)(x)
    x = keras.layers.Dense(dense, activation="relu")(x)
    return _finish(inputs, x, "small_cnn", num_classes, task, learning_rate)


def mlp(
    input_shape: tuple[int, ...] = (784,),
    num_classes: int = 10,
    *,
    hidden: tuple[int, ...] = (128, 64),
    dropout: float = 0.1,
    learning_rate: float = 1e-3,
    inputs: object = None,
    features: object = None,
    task: LabelTask | None = None,
) -> keras.Model:
    """A compiled MLP: Flatten -> Dense(relu) x len(hidden) -> softmax (or ``task``'s head).

    Args:
        input_shape: shape of one example (flattened inside); ignored with ``inputs``.
        num_classes: softmax outputs.
        hidden: units of each hidden layer.
        dropout: dropout after each hidden layer.
        learning_rate: Adam's learning rate.
        inputs, features: an existing Keras input structure and the tensor to build on (e.g.
            ``TabularPreprocessing.inputs`` / ``.encoded``), so preprocessing lives inside.
        task: the task read from the labels: its head, loss and metrics instead of
            ``num_classes`` (see :mod:`tfprod.models.heads`).
    """
    if task is None and num_classes < 2:
        raise TfprodError(f"num_classes={num_classes}; expected at least 2")
    if inputs is None:
        inputs = keras.Input(input_shape, name="x")
        features = inputs
    x = keras.layers.Flatten()(features)
    for units in hidden:
        x = keras.layers.Dense(units, activation="relu")(x)
        if dropout:
            x = keras.layers.Dropout(dropout)(x)
    return _finish(inputs, x, "mlp", num_classes, task, learning_rate)
