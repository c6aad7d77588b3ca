"""Label leakage: a tabular feature that equals, or nearly equals, the label.

A column that predicts the label on its own almost perfectly is the label under another name (a
target column left in the features, an id assigned after labelling, a field filled in from the
outcome): the model learns to copy it and fails in production, where it is unknown. For class
labels each column is scored by its one-dimensional nearest neighbour (sort by the column: does
the next example have the same class?) as balanced accuracy, so imbalance does not inflate it;
for continuous targets by the absolute Pearson and rank correlation.
"""

from __future__ import annotations

import numpy as np

from tfprod.doctor.finding import Finding
from tfprod.doctor.probe import Probe

MIN_EXAMPLES = 50
MAX_COLUMNS = 1024
MAX_ROWS = 4000
#: balanced accuracy of a column's 1-D nearest neighbour, or |correlation|, from which it leaks.
CLASS_LEAK = 0.99
TARGET_LEAK = 0.998
_MIN_PER_CLASS = 5


def _columns(probe: Probe, index: np.ndarray) -> tuple[list[str], np.ndarray] | None:
    """Tabular columns (inputs of rank <= 2), as ``(names, [N, C] float64)``."""
    named = probe.x.items() if isinstance(probe.x, dict) else [("x", probe.x)]
    names, parts = [], []
    for name, a in named:
        if a.dtype.kind not in "biuf" or a.ndim > 2:
            continue
        a = np.asarray(a[index], np.float64).reshape(len(index), -1)
        names += [name] if a.shape[1] == 1 else [f"{name}[:, {j}]" for j in range(a.shape[1])]
        parts.append(a)
    if not parts or len(names) > MAX_COLUMNS:
        return None
    return names, np.concatenate(parts, axis=1)


def _neighbour_accuracy(column: np.ndarray, labels: np.ndarray, rng) -> float:
    """Balanced accuracy of guessing each example's class as the next one's, sorted by column.

    Ties are broken at random (shuffle, then a stable sort), so a column with few distinct
    values scores the purity of its values, not the data's order.
    """
    shuffle = rng.permutation(len(column))
    order = shuffle[np.argsort(column[shuffle], kind="stable")]
    ordered = labels[order]
    same = ordered[:-1] == ordered[1:]
    cls = ordered[:-1]
    return float(np.mean([same[cls == c].mean() for c in np.unique(cls)]))


def _rank(a: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(np.float64)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(abs(np.corrcoef(a, b)[0, 1]))


def check_leakage(probe: Probe) -> tuple[list[Finding], bool]:
    """Findings, and whether the check ran (tabular inputs and one label per example)."""
    task = probe.task
    y = probe.y
    if not isinstance(y, np.ndarray) or y.dtype.kind not in "biuf":
        return [], False
    rng = np.random.default_rng(probe.seed)
    index = np.flatnonzero(probe.finite)
    if len(index) > MAX_ROWS:
        index = np.sort(rng.choice(index, MAX_ROWS, replace=False))
    if len(index) < MIN_EXAMPLES:
        return [], False
    columns = _columns(probe, index)
    if columns is None:
        return [], False
    names, x = columns
    yy = y[index].reshape(len(index), -1)
    scores: dict[str, float] = {}
    if task.labels in ("sparse", "onehot"):
        labels = yy[:, 0].astype(np.int64) if yy.shape[1] == 1 else np.argmax(yy, axis=1)
        _, counts = np.unique(labels, return_counts=True)
        if len(counts) < 2 or counts.min() < _MIN_PER_CLASS:
            return [], False
        for j, name in enumerate(names):
            if x[:, j].std() > 0:
                scores[name] = _neighbour_accuracy(x[:, j], labels, rng)
        measure, threshold = "balanced accuracy of the column's 1-D nearest neighbour", CLASS_LEAK
    elif task.labels == "continuous" and yy.shape[1] == 1:
        target = yy[:, 0].astype(np.float64)
        target_rank = _rank(target)
        for j, name in enumerate(names):
            scores[name] = max(_correlation(x[:, j], target),
                               _correlation(_rank(x[:, j]), target_rank))
        measure, threshold = "|correlation| with the target", TARGET_LEAK
    else:
        return [], False
    leaks = sorted(((s, n) for n, s in scores.items() if s >= threshold), reverse=True)
    if not leaks:
        return [], True
    shown = ", ".join(f"{name} ({score:.3f})" for score, name in leaks[:5])
    best = max(scores.values())
    others = [s for s in scores.values() if s < threshold]
    rest = (f"; the best other column scores {max(others):.2f}" if others else "")
    return [Finding(
        "leakage", "error", "a feature leaks the label",
        f"{shown}: {measure} on {len(index)} examples (threshold {threshold}){rest}: the "
        "column is the label under another name, so the model learns to copy it and fails "
        "where it is unknown (in production)",
        "drop the column(s) from the features (or compute them only from what is known before "
        "the label); check the export's joins and that the target column is excluded",
        {"columns": {n: s for s, n in leaks[:50]}, "best": best,
         "examples": int(len(index))})], True

