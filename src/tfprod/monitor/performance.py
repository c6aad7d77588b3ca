"""Prediction drift and model quality: measured where labels exist, estimated where not.

- :func:`prediction_columns`: what a model output is compared by: the predicted class and the
  confidence for a classifier's probabilities, the value for a regressor.
- :func:`accuracy_by_window`: accuracy per time window of predictions joined to late labels.
- :class:`ConfidenceCalibration`: confidence-based performance estimation (NannyML's CBPE
  idea): on the reference, where labels exist, learn P(correct | confidence) in confidence
  bins; on unlabeled current data the expected accuracy is the mean calibrated probability.
  Its error is stated as a 95% half-width that adds the sampling error of the current rows to
  the calibration error measured on a held-out half of the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONFIDENCE_BINS = 10


def is_classifier_output(values: np.ndarray) -> bool:
    """Rows of class scores: ``[n, k]`` with ``k >= 2``, or one probability per row."""
    v = np.asarray(values)
    if v.dtype.kind != "f" or not len(v):
        return False
    if v.ndim == 2 and v.shape[1] >= 2:
        return True
    return v.ndim in (1, 2) and v.size == len(v) and bool(np.all((v >= 0) & (v <= 1)))


def classes_and_confidence(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class and its probability per row."""
    v = np.asarray(values, np.float64)
    if v.ndim == 2 and v.shape[1] >= 2:
        return v.argmax(axis=1), v.max(axis=1)
    p = v.reshape(len(v))
    cls = (p >= 0.5).astype(np.int64)
    return cls, np.where(cls == 1, p, 1 - p)


def prediction_columns(outputs: dict[str, np.ndarray]) -> dict[str, tuple[str, np.ndarray]]:
    """Output name -> (kind, 1-D values) of what prediction drift compares."""
    out: dict[str, tuple[str, np.ndarray]] = {}
    for name, values in outputs.items():
        v = np.asarray(values)
        if is_classifier_output(v):
            cls, conf = classes_and_confidence(v)
            out[f"{name}:class"] = ("categorical", cls)
            out[f"{name}:confidence"] = ("numeric", conf)
        elif v.dtype.kind in "iufb":
            flat = v.reshape(len(v), -1)
            out[name] = ("numeric", flat.mean(axis=1) if flat.shape[1] > 1 else flat[:, 0])
    return out


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    cls, _ = classes_and_confidence(predictions)
    return float(np.mean(cls == np.asarray(labels).reshape(len(cls))))


def accuracy_by_window(times: np.ndarray, predictions: np.ndarray, labels: np.ndarray,
                       window_s: float) -> list[dict]:
    """``[{"start", "rows", "accuracy"}]`` per ``window_s`` seconds of ``times`` (epoch s)."""
    times = np.asarray(times, np.float64)
    if not len(times):
        return []
    cls, _ = classes_and_confidence(predictions)
    right = cls == np.asarray(labels).reshape(len(cls))
    start = np.floor(times.min() / window_s) * window_s
    slot = ((times - start) // window_s).astype(np.int64)
    out = []
    for s in np.unique(slot):
        sel = slot == s
        out.append({"start": float(start + s * window_s), "rows": int(sel.sum()),
                    "accuracy": float(right[sel].mean())})
    return out


@dataclass
class ConfidenceCalibration:
    """P(correct | confidence) learned on labeled reference predictions."""

    edges: np.ndarray
    rates: np.ndarray
    reference_accuracy: float
    calibration_error: float

    @classmethod
    def fit(cls, predictions: np.ndarray, labels: np.ndarray, *, bins: int = CONFIDENCE_BINS,
            seed: int = 0) -> ConfidenceCalibration:
        pred, conf = classes_and_confidence(predictions)
        right = (pred == np.asarray(labels).reshape(len(pred))).astype(np.float64)
        edges = np.unique(np.quantile(conf, np.linspace(0, 1, bins + 1)))
        rates = _bin_rates(conf, right, edges)
        # The estimator's own error: fit on one half, estimate the other half's accuracy.
        rng = np.random.default_rng(seed)
        errors = []
        for _ in range(20):
            half = rng.permutation(len(conf)) < len(conf) // 2
            r = _bin_rates(conf[half], right[half], edges)
            estimate = r[_bin(conf[~half], edges)].mean()
            errors.append(estimate - right[~half].mean())
        return cls(edges, rates, float(right.mean()), float(np.sqrt(np.mean(np.square(errors)))))

    def estimate(self, predictions: np.ndarray) -> tuple[float, float]:
        """(expected accuracy, 95% half-width) on unlabeled predictions."""
        _, conf = classes_and_confidence(predictions)
        p = self.rates[_bin(conf, self.edges)]
        sampling = np.sqrt(np.sum(p * (1 - p))) / max(len(p), 1)
        return float(p.mean()), float(1.96 * np.hypot(sampling, self.calibration_error))


def _bin(conf: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, max(len(edges) - 2, 0))


def _bin_rates(conf: np.ndarray, right: np.ndarray, edges: np.ndarray) -> np.ndarray:
    slots = _bin(conf, edges)
    k = max(len(edges) - 1, 1)
    hits = np.bincount(slots, right, minlength=k)
    counts = np.bincount(slots, minlength=k)
    overall = right.mean() if len(right) else 0.0
    return np.where(counts > 0, (hits + overall) / (counts + 1), overall)  # smoothed
