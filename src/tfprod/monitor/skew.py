"""Training/serving skew: the same examples through both paths, and the data each path saw.

- :func:`prediction_skew`: the exported model's outputs vs the training pipeline's on the same
  examples (e.g. ``keras_model.predict`` on the preprocessed training tensors vs the served
  SavedModel on raw inputs): largest difference and the share of rows whose predicted class
  differs.
- :func:`feature_skew`: TFDV's skew comparator between training data and served requests, per
  feature: L-infinity distance of category frequencies (categorical) and Jensen-Shannon
  distance of binned frequencies (numeric), each against a threshold.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tfprod.monitor import univariate as uni
from tfprod.monitor.performance import classes_and_confidence, is_classifier_output
from tfprod.monitor.table import check_same_features, column_values, plan_columns

L_INFINITY_THRESHOLD = 0.1
JENSEN_SHANNON_THRESHOLD = 0.1
_BINS = 20


def prediction_skew(served: Mapping[str, np.ndarray], training: Mapping[str, np.ndarray], *,
                    atol: float = 1e-4) -> dict[str, Any]:
    """Compare outputs of the same examples: output name -> max |difference|, class flips."""
    out: dict[str, Any] = {}
    for name, a in served.items():
        if name not in training:
            continue
        a, b = np.asarray(a, np.float64), np.asarray(training[name], np.float64)
        entry: dict[str, Any] = {"max_abs_diff": float(np.max(np.abs(a - b))) if a.size else 0.0}
        if is_classifier_output(a):
            ca, _ = classes_and_confidence(a)
            cb, _ = classes_and_confidence(b)
            entry["class_flips"] = float(np.mean(ca != cb))
        entry["skew"] = entry["max_abs_diff"] > atol
        out[name] = entry
    return out


def feature_skew(training: Mapping[str, np.ndarray], serving: Mapping[str, np.ndarray]
                 ) -> list[dict[str, Any]]:
    """Per tested column: ``{"name", "measure", "score", "threshold", "skew"}``."""
    check_same_features(training, serving, where="serving data")
    out = []
    for column in plan_columns(training):
        a, b = column_values(training, column), column_values(serving, column)
        if column.kind == "categorical":
            _, r, c = uni.category_counts(a, b)
            score = float(np.max(np.abs(r / max(r.sum(), 1) - c / max(c.sum(), 1))))
            measure, threshold = "l_infinity", L_INFINITY_THRESHOLD
        else:
            a, b = uni._finite(a), uni._finite(b)
            lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
            edges = np.linspace(lo, hi if hi > lo else lo + 1, _BINS + 1)
            score = uni.jensen_shannon_from_counts(np.histogram(a, edges)[0],
                                                   np.histogram(b, edges)[0])
            measure, threshold = "jensen_shannon", JENSEN_SHANNON_THRESHOLD
        out.append({"name": column.name, "measure": measure, "score": score,
                    "threshold": threshold, "skew": bool(score >= threshold)})
    return out
