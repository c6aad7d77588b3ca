"""Reference statistics of the training data, saved inside an exported version for monitoring.

File: ``<version>/assets.extra/tfprod/reference_stats.json`` (TF Serving copies
``assets.extra`` along with the version and ignores what it does not know). Format
``tfprod.reference_stats/1``::

    {
      "format": "tfprod.reference_stats/1",
      "num_examples": 1438,                  # examples the statistics were computed on
      "features": {"<input name>": FEATURE, ...},    # one per serving-signature input
      "predictions": {"<output name>": PREDICTION, ...},  # the model on those examples
      "labels": FEATURE | null               # the labels, when the data had them
    }

A numeric FEATURE (ints, floats, bools; images are numeric too)::

    {"kind": "numeric" | "image", "dtype": "float32", "shape": [32, 32, 1],  # one example
     "count": 1472512,      # finite values counted (all elements of every example)
     "missing": 0,          # NaN / Inf values, left out of everything below
     "mean": ..., "std": ..., "min": ..., "max": ...,
     "quantiles": {"q": [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99], "values": [...]},
     "histogram": {"edges": [21 bin edges], "counts": [20 counts]},
     "channels": [{"mean": ..., "std": ...}, ...]}   # "image" only: per channel

Beside it, ``reference_sample.npz`` keeps a uniform sample of at most ``SAMPLE_EXAMPLES`` of
those examples (``inputs/<name>``, ``predictions/<name>``, ``labels``, and ``embeddings``
``[n, d]`` float32 when the version has an ``embedding`` endpoint: the model's penultimate layer
on each sampled example), what ``tfprod.monitor`` compares served requests with.

``"image"`` is a numeric feature whose examples are ``[height, width, 1|3|4]``; its statistics
are over pixel values. Histogram bins are equal-width over ``[min, max]`` (one bin when they are
equal); the last bin includes ``max``.

A string FEATURE::

    {"kind": "string", "dtype": "string", "shape": [1], "count": 5000,
     "missing": 12,          # empty strings
     "unique": 7,
     "top": [["red", 2500], ["blue", 1800], ...],   # most frequent values, at most 20
     "other": 0}             # values outside "top"

A PREDICTION is a numeric FEATURE of the output values, plus for classifiers::

    "classes": {"num_classes": 10, "counts": [...], "frequencies": [...]}

(argmax over the last axis when it has two or more units; ``value >= 0.5`` when it has one unit
and every value lies in [0, 1]). Labels that are non-negative integers get ``classes`` too.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from tfprod.errors import TfprodError
from tfprod.export.publish import version_file

FORMAT = "tfprod.reference_stats/1"
REFERENCE_FILE = os.path.join("assets.extra", "tfprod", "reference_stats.json")
SAMPLE_FILE = os.path.join("assets.extra", "tfprod", "reference_sample.npz")
SAMPLE_EXAMPLES = 5000
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
BINS = 20
TOP_VALUES = 20
_MAX_LABEL_CLASSES = 10_000


def _is_text(values: np.ndarray) -> bool:
    return values.dtype.kind in "OSU"


def _numeric(values: np.ndarray, kind: str) -> dict[str, Any]:
    flat = values.astype(np.float64, copy=False).ravel()
    finite = flat[np.isfinite(flat)]
    out: dict[str, Any] = {
        "kind": kind, "dtype": values.dtype.name, "shape": list(values.shape[1:]),
        "count": int(finite.size), "missing": int(flat.size - finite.size),
    }
    if not finite.size:
        return out
    lo, hi = float(finite.min()), float(finite.max())
    counts, edges = np.histogram(finite, bins=BINS if hi > lo else 1,
                                 range=(lo, hi) if hi > lo else (lo, lo + 1.0))
    if hi == lo:
        edges = np.array([lo, hi])
    out.update(
        mean=float(finite.mean()), std=float(finite.std()), min=lo, max=hi,
        quantiles={"q": list(QUANTILES),
                   "values": [float(v) for v in np.quantile(finite, QUANTILES)]},
        histogram={"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    )
    return out


def _channels(values: np.ndarray) -> list[dict[str, float]]:
    per_channel = values.astype(np.float64, copy=False).reshape(-1, values.shape[-1])
    out = []
    for c in range(per_channel.shape[1]):
        x = per_channel[:, c]
        x = x[np.isfinite(x)]
        out.append({"mean": float(x.mean()) if x.size else None,
                    "std": float(x.std()) if x.size else None})
    return out


def _text(values: np.ndarray) -> dict[str, Any]:
    items = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
             for v in values.ravel().tolist()]
    counts = Counter(items)
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_VALUES]
    return {
        "kind": "string", "dtype": "string", "shape": list(values.shape[1:]),
        "count": len(items), "missing": counts.get("", 0), "unique": len(counts),
        "top": [[v, n] for v, n in top], "other": len(items) - sum(n for _, n in top),
    }


def feature_stats(values: np.ndarray) -> dict[str, Any]:
    """Statistics of one feature's examples ``[n, ...]`` (see the module docstring)."""
    values = np.asarray(values)
    if _is_text(values):
        return _text(values)
    image = values.ndim == 4 and values.shape[-1] in (1, 3, 4)
    out = _numeric(values, "image" if image else "numeric")
    if image:
        out["channels"] = _channels(values)
    return out


def _classes(counts: np.ndarray) -> dict[str, Any]:
    total = max(int(counts.sum()), 1)
    return {"num_classes": int(counts.size), "counts": [int(c) for c in counts],
            "frequencies": [float(c) / total for c in counts]}


def prediction_stats(outputs: np.ndarray) -> dict[str, Any]:
    """Statistics of one model output ``[n, ...]``, with a class histogram for classifiers."""
    outputs = np.asarray(outputs)
    out = feature_stats(outputs)
    if _is_text(outputs) or outputs.ndim not in (1, 2) or not len(outputs):
        return out
    width = 1 if outputs.ndim == 1 else outputs.shape[1]
    if width >= 2:
        out["classes"] = _classes(np.bincount(outputs.argmax(axis=1), minlength=width))
    elif np.all((outputs >= 0) & (outputs <= 1)):
        positive = int((outputs.ravel() >= 0.5).sum())
        out["classes"] = _classes(np.array([len(outputs) - positive, positive]))
    return out


def label_stats(labels: np.ndarray) -> dict[str, Any]:
    """Statistics of the labels, with class counts when they are non-negative integers."""
    labels = np.asarray(labels)
    out = feature_stats(labels)
    if labels.dtype.kind in "iu" and labels.size and labels.min() >= 0 \
            and labels.max() < _MAX_LABEL_CLASSES:
        out["classes"] = _classes(np.bincount(labels.ravel().astype(np.int64)))
    return out


def reference_stats(
    features: Mapping[str, np.ndarray],
    predictions: Mapping[str, np.ndarray],
    labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """The reference statistics document (see the module docstring for its format).

    Args:
        features: signature input name -> examples ``[n, ...]`` as the model takes them.
        predictions: output name -> the model's outputs on those examples.
        labels: the examples' labels, if known.
    """
    n = len(next(iter(features.values()))) if features else 0
    return {
        "format": FORMAT,
        "num_examples": int(n),
        "features": {k: feature_stats(v) for k, v in features.items()},
        "predictions": {k: prediction_stats(v) for k, v in predictions.items()},
        "labels": None if labels is None else label_stats(labels),
    }


def write_reference_stats(version_dir: str | os.PathLike, stats: Mapping[str, Any]) -> str:
    """Writes ``stats`` to ``<version_dir>/assets.extra/tfprod/reference_stats.json``."""
    path = os.path.join(os.fspath(version_dir), REFERENCE_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=1, allow_nan=False)
    return path


def write_reference_sample(
    version_dir: str | os.PathLike,
    features: Mapping[str, np.ndarray],
    predictions: Mapping[str, np.ndarray],
    labels: np.ndarray | None = None,
    *,
    embed: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = None,
    max_examples: int = SAMPLE_EXAMPLES,
    seed: int = 0,
) -> str:
    """Writes a uniform sample of the reference examples to ``<version_dir>/`` SAMPLE_FILE.

    Text inputs are stored as unicode arrays (the file holds no pickles). ``embed``, when
    given, maps the sampled examples to their embeddings (stored as ``embeddings``).
    """
    n = len(next(iter(features.values()))) if features else 0
    keep = np.arange(n)
    if n > max_examples:
        keep = np.sort(np.random.default_rng(seed).choice(n, max_examples, replace=False))

    def storable(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)[keep]
        if x.dtype.kind == "O":
            flat = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                    for v in x.ravel().tolist()]
            return np.array(flat).reshape(x.shape)
        return x

    arrays = {f"inputs/{k}": storable(v) for k, v in features.items()}
    arrays.update({f"predictions/{k}": storable(v) for k, v in predictions.items()})
    if labels is not None:
        arrays["labels"] = storable(labels)
    if embed is not None and n:
        arrays["embeddings"] = np.asarray(embed({k: np.asarray(v)[keep]
                                                 for k, v in features.items()}), np.float32)
    path = os.path.join(os.fspath(version_dir), SAMPLE_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def load_reference_stats(version_dir: str | os.PathLike) -> dict[str, Any]:
    """The reference statistics saved in an exported version (see the module docstring).

    Args:
        version_dir: a version folder (``BASE/<version>``) or the JSON file itself.

    Raises:
        TfprodError: no statistics there (exported without reference data), or an unreadable
            or foreign file.
    """
    path = version_file(version_dir, REFERENCE_FILE, "reference statistics")
    try:
        with open(path, encoding="utf-8") as f:
            stats = json.load(f)
    except (OSError, ValueError) as e:
        raise TfprodError(f"{path}: unreadable reference statistics ({e})") from None
    if not isinstance(stats, dict) or stats.get("format") != FORMAT:
        found = stats.get("format") if isinstance(stats, dict) else type(stats).__name__
        raise TfprodError(f"{path}: format {found!r}; expected {FORMAT!r}")
    return stats
