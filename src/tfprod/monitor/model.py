"""The exported model's view of a dataset: its predictions and embeddings.

A version exported with an ``embedding`` endpoint (``embedding=True`` or
``extra_endpoints={"embedding": ...}``: the penultimate layer) lets the multivariate test compare
images and other wide inputs on what the model sees instead of per pixel; the export keeps the
reference sample's embeddings, so only served data is embedded at report time.
:func:`with_model_outputs` fills in what a dataset lacks.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from tfprod.monitor.datasets import Dataset

EMBEDDING_SIGNATURE = "embedding"
SERVING_DEFAULT = "serving_default"
_BATCH = 512


def version_folder(path: str | os.PathLike) -> str | None:
    """``path`` if it is a SavedModel version folder, its newest version if a base path."""
    p = os.fspath(path)
    if not os.path.isdir(p):
        return None
    if os.path.exists(os.path.join(p, "saved_model.pb")):
        return p
    versions = sorted(int(d) for d in os.listdir(p) if d.isdigit()
                      and os.path.exists(os.path.join(p, d, "saved_model.pb")))
    return os.path.join(p, str(versions[-1])) if versions else None


class ExportedModel:
    """The serving and embedding signatures of one exported version."""

    def __init__(self, version_dir: str):
        import tensorflow as tf

        self.path = version_dir
        self._loaded = tf.saved_model.load(version_dir)
        self.signatures = dict(self._loaded.signatures)

    @property
    def has_embedding(self) -> bool:
        return EMBEDDING_SIGNATURE in self.signatures

    def run(self, signature: str, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        fn = self.signatures[signature]
        specs = fn.structured_input_signature[1]
        n = len(next(iter(features.values())))
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, n, _BATCH):
            batch = {k: tf.constant(np.asarray(features[k][start:start + _BATCH]),
                                    dtype=specs[k].dtype) for k in specs}
            for k, v in fn(**batch).items():
                parts.setdefault(k, []).append(v.numpy())
        return {k: np.concatenate(v) for k, v in parts.items()}

    def embeddings(self, features: dict[str, np.ndarray]) -> np.ndarray:
        out = self.run(EMBEDDING_SIGNATURE, features)
        value = next(iter(out.values()))
        return value.reshape(len(value), -1)


def with_model_outputs(model: Any, *datasets: Dataset) -> None:
    """Fill in each dataset's predictions (if it has none) and embeddings (if the model has
    an ``embedding`` signature), in place."""
    for d in datasets:
        if not d.rows:
            continue
        if not d.predictions:
            d.predictions = model.run(SERVING_DEFAULT, d.features)
        if d.embeddings is None and model.has_embedding:
            d.embeddings = model.embeddings(d.features)


def penultimate(model: Any) -> Any:
    """A Keras model from ``model``'s inputs to what its head takes (the embedding).

    Export it beside the model, ``export_saved_model(model, base, embedding=True, ...)`` (or
    ``extra_endpoints={"embedding": penultimate(model)}``), and the export keeps the reference
    sample's embeddings and the multivariate drift test compares what the model sees.

    Raises:
        TfprodError: the model has no such ``[batch, d]`` vector.
    """
    from tfprod.errors import TfprodError
    from tfprod.export.embedding import penultimate as find

    embed = find(model)
    if embed is None:
        raise TfprodError(f"model {model.name!r} has no penultimate [batch, d] vector to use as "
                          "its embedding (one output whose head is a layer with weights)")
    return embed
