"""A :class:`~tfprod.models.Recommender` as a versioned SavedModel with two signatures.

* ``serving_default``: ``user_id`` and ``item_id`` (int64, one per row) -> ``score``.
* ``recommend``: ``user_id`` and the items to leave out, ``seen`` (variable-length lists,
  exported as ``seen.values`` / ``seen.row_lengths``, see :mod:`tfprod.export.ragged`; an
  empty list leaves nothing out) -> ``item_ids`` (int64) and ``scores`` of the top ``k``.

Both run the model's own graph code (:meth:`Recommender.recommend_graph`), so the served top-k
equals ``model.recommend``. Example REST request to ``tfprod serve``::

    {"signature_name": "recommend", "instances": [{"user_id": 3, "seen": [12, 40]}]}
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from tfprod.data.interactions import Interactions
from tfprod.errors import TfprodError
from tfprod.export.ragged import RaggedInput
from tfprod.export.savedmodel import ExportResult, export_saved_model

RECOMMEND = "recommend"
_REFERENCE_PAIRS = 1024


def recommend_endpoint(model: Any, k: int) -> Any:
    """The ``recommend`` signature's ``tf.function`` for ``model`` and ``k``."""
    from tfprod.models.recommender import check_k

    k = check_k(k, model.num_items)
    seen = RaggedInput(dtype="int64", min_length=0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="user_id"),
                                  *seen.specs("seen")])
    def recommend(user_id, seen_values, seen_row_lengths):
        ids, scores = model.recommend_graph(user_id, seen_values, seen_row_lengths, k)
        return {"item_ids": ids, "scores": scores}

    return recommend


def export_recommender(model: Any, base_path: str | os.PathLike, *, k: int = 10,
                       reference: Interactions | None = None, version: int | None = None,
                       overwrite: bool = False,
                       progress: Callable[[str], None] | None = None) -> ExportResult:
    """Exports ``model`` with ``serving_default`` (pair scores) and ``recommend`` (top ``k``).

    Args:
        model: a trained :class:`~tfprod.models.Recommender`.
        base_path: the folder of versions.
        k: items returned by ``recommend``.
        reference: training interactions: a sample of their pairs is the reference data (the
            check before publishing, warmup requests, statistics).
        version, overwrite, progress: as :func:`~tfprod.export.export_saved_model`.
    """
    from tfprod.models.recommender import Recommender

    if not isinstance(model, Recommender):
        raise TfprodError(f"got a {type(model).__name__}; expected a tfprod.models.Recommender")
    spec = tf.TensorSpec([None], tf.int64)
    data = None
    if reference is not None:
        pick = np.random.default_rng(0).permutation(len(reference))[:_REFERENCE_PAIRS]
        data = {"user_id": reference.users[pick], "item_id": reference.items[pick]}
    return export_saved_model(
        model, base_path, version=version, overwrite=overwrite, reference_data=data,
        input_signature={"user_id": spec, "item_id": spec},
        extra_endpoints={RECOMMEND: recommend_endpoint(model, k)}, progress=progress)
