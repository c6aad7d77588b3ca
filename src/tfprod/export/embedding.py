"""The model's embedding: what its head takes (the penultimate layer), as an export endpoint.

:func:`penultimate` finds the input of the last layer with trainable weights on the way back
from the output (skipping weightless layers after it: a ``Target`` naming the output, an
``Activation``, a ``Normalization`` that puts values back in label units) and returns a Keras
model from the inputs to it, when it is one ``[batch, d]`` vector. Exported as the ``embedding``
endpoint, it lets ``tfprod export`` keep the embeddings of the reference sample beside it
(``assets.extra/tfprod/reference_sample.npz``, ``embeddings``) and lets ``tfprod.monitor``
compare images and other wide inputs on what the model sees rather than per pixel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

EMBEDDING = "embedding"
_BATCH = 256


def penultimate(model: keras.Model) -> keras.Model | None:
    """A model from ``model``'s inputs to its embedding, or None when it has no such vector
    (several outputs, a head over several tensors, an embedding that is not ``[batch, d]``)."""
    try:  # a subclassed model has no graph of layers to walk
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        return None
    if not inputs or not outputs or len(outputs) != 1:
        return None
    for layer in reversed(model.layers):
        if not layer.trainable_weights:
            continue
        try:
            tensor = layer.input
        except (AttributeError, ValueError):  # a layer called more than once
            return None
        if isinstance(tensor, (list, tuple, dict)) or len(tensor.shape) != 2 \
                or not tensor.shape[1] or tensor.shape[1] < 2:
            return None
        return keras.Model(inputs, tensor, name=EMBEDDING)
    return None


def has_image_input(model: keras.Model) -> bool:
    """Whether an input is an image (``[batch, height, width, 1|3|4]``)."""
    try:
        inputs = model.inputs or []
    except (AttributeError, ValueError):  # a subclassed model
        return False
    return any(len(t.shape) == 4 and t.shape[-1] in (1, 3, 4) for t in inputs)


def signature_embedder(loaded: Any) -> Callable[[Mapping[str, np.ndarray]], np.ndarray] | None:
    """A function of examples (by input name) to ``[n, d]`` float32 embeddings through the
    loaded SavedModel's ``embedding`` signature, the same function the server runs; None when
    the version has no such signature."""
    fn = loaded.signatures.get(EMBEDDING)
    if fn is None:
        return None
    specs = fn.structured_input_signature[1]

    def embed(examples: Mapping[str, np.ndarray]) -> np.ndarray:
        n = len(next(iter(examples.values())))
        parts = []
        for start in range(0, n, _BATCH):
            out = fn(**{k: tf.constant(np.asarray(examples[k][start:start + _BATCH]),
                                       dtype=specs[k].dtype) for k in specs})
            value = next(iter(out.values())).numpy()
            parts.append(value.reshape(len(value), -1).astype(np.float32))
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    return embed
