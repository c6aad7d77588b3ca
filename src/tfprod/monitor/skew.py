"""Training/serving skew: the same examples through both paths, and the data each path saw.

- :func:`prediction_skew`: the exported model's outputs vs the training pipeline's on the same
  examples (e.g. ``keras_model.predict`` on the preprocessed training tensors vs the served
  SavedModel on raw inputs): largest difference and the share of rows whose predicted class
  differs.
- :func:`feature_skew`: TFDV's skew comparator between training data and served requests, per
  feature: L-infinity distance of category frequencies (categorical) and Jensen-Shannon
  distance of binned frequencies (numeric), each against a threshold.
- :func:`skew_report`: both, as the table, JSON and exit status of ``tfprod monitor skew``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfprod.errors import TfprodError
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


def feature_skew(training: Mapping[str, np.ndarray], serving: Mapping[str, np.ndarray], *,
                 l_infinity: float = L_INFINITY_THRESHOLD,
                 jensen_shannon: float = JENSEN_SHANNON_THRESHOLD) -> list[dict[str, Any]]:
    """Per tested column: ``{"name", "measure", "score", "threshold", "skew"}``.

    A column with no finite value on one side only is skewed (score None).
    """
    check_same_features(training, serving, where="serving data")
    out = []
    for column in plan_columns(training):
        a, b = column_values(training, column), column_values(serving, column)
        score: float | None
        if column.kind == "categorical":
            _, r, c = uni.category_counts(a, b)
            score = float(np.max(np.abs(r / max(r.sum(), 1) - c / max(c.sum(), 1))))
            measure, threshold = "l_infinity", l_infinity
        else:
            a, b = uni._finite(a), uni._finite(b)
            measure, threshold = "jensen_shannon", jensen_shannon
            if not a.size or not b.size:
                out.append({"name": column.name, "measure": measure, "score": None,
                            "threshold": threshold, "skew": bool(a.size or b.size)})
                continue
            lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
            edges = np.linspace(lo, hi if hi > lo else lo + 1, _BINS + 1)
            score = uni.jensen_shannon_from_counts(np.histogram(a, edges)[0],
                                                   np.histogram(b, edges)[0])
        out.append({"name": column.name, "measure": measure, "score": score,
                    "threshold": threshold, "skew": bool(score >= threshold)})
    return out


@dataclass
class SkewReport:
    """Training/serving skew: per-feature distances and, when both paths ran, predictions.

    Attributes:
        features: :func:`feature_skew`'s entries.
        predictions: :func:`prediction_skew`'s, or None when only data was compared.
        training_rows, serving_rows: the rows compared.
        atol: the largest difference between predictions that is not skew.
    """

    features: list[dict[str, Any]]
    predictions: dict[str, Any] | None = None
    training_rows: int = 0
    serving_rows: int = 0
    atol: float = 1e-4
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def skewed(self) -> list[str]:
        return [f["name"] for f in self.features if f["skew"]]

    @property
    def skew(self) -> bool:
        return bool(self.skewed) or any(p["skew"] for p in (self.predictions or {}).values())

    @property
    def exit_status(self) -> int:
        """1 when skew was found (for cron and CI), else 0."""
        return int(self.skew)

    def rows(self, limit: int | None = None) -> list[list[str]]:
        """Table rows, the worst (score / threshold) first."""
        def severity(f: dict[str, Any]) -> float:
            return float("inf") if f["score"] is None else f["score"] / f["threshold"]

        ranked = sorted(self.features, key=lambda f: (not f["skew"], -severity(f)))
        return [[f["name"], f["measure"], "-" if f["score"] is None else f"{f['score']:.4f}",
                 f"{f['threshold']:g}", "SKEW" if f["skew"] else "-"]
                for f in ranked[:limit]]

    def summary(self) -> str:
        parts = [f"{len(self.skewed)} of {len(self.features)} features skewed"]
        if self.predictions is not None:
            flipped = [k for k, v in self.predictions.items() if v["skew"]]
            parts.append(f"predictions differ in {', '.join(flipped)}" if flipped
                         else f"predictions agree (atol {self.atol:g})")
        return ("SKEW: " if self.skew else "no skew: ") + "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"skew": self.skew, "skewed": self.skewed, "features": self.features,
                "predictions": self.predictions, "training_rows": self.training_rows,
                "serving_rows": self.serving_rows, "atol": self.atol, "sources": self.sources}


def skew_report(training: Mapping[str, np.ndarray], serving: Mapping[str, np.ndarray], *,
                served_predictions: Mapping[str, np.ndarray] | None = None,
                training_predictions: Mapping[str, np.ndarray] | None = None,
                l_infinity: float = L_INFINITY_THRESHOLD,
                jensen_shannon: float = JENSEN_SHANNON_THRESHOLD,
                atol: float = 1e-4) -> SkewReport:
    """Feature skew of ``serving`` from ``training`` and, when both are given, prediction skew.

    Args:
        training, serving: feature tables (the data each path saw).
        served_predictions, training_predictions: outputs of the same examples through the
            served model and the training pipeline (compared by output name).
        l_infinity, jensen_shannon: thresholds of the categorical / numeric distances.
        atol: predictions differing by more than this are skewed.

    Raises:
        TfprodError: an empty side, different features, or predictions with no common output.
    """
    n_train = len(next(iter(training.values()), ()))
    n_serve = len(next(iter(serving.values()), ()))
    if not n_train or not n_serve:
        side = "training" if not n_train else "serving"
        raise TfprodError(f"the {side} data has no rows; skew compares examples of both")
    report = SkewReport(feature_skew(training, serving, l_infinity=l_infinity,
                                     jensen_shannon=jensen_shannon),
                        training_rows=n_train, serving_rows=n_serve, atol=atol)
    if served_predictions is not None and training_predictions is not None:
        common = sorted(set(served_predictions) & set(training_predictions))
        if not common:
            raise TfprodError(f"served outputs {sorted(served_predictions)} and the training "
                              f"pipeline's {sorted(training_predictions)} share no name; name "
                              "the model's outputs as its serving signature does")
        for k in common:
            a, b = np.shape(served_predictions[k]), np.shape(training_predictions[k])
            if a != b:
                raise TfprodError(f"output {k!r}: served shape {a}, training pipeline's {b}; "
                                  "both paths must run the same examples")
        report.predictions = prediction_skew(served_predictions, training_predictions,
                                             atol=atol)
    return report
