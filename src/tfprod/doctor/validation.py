"""Validation data against training data: shared examples, and a different distribution.

- Overlap: validation examples whose features also occur in the training sample (exact, byte for
  byte). They measure memory, not generalization, so the validation score is optimistic and
  early stopping and model choice follow it.
- Shift: a classifier two-sample test. Two simple classifiers (nearest centroid for a shift in
  the means, k-nearest neighbours for any other) try to tell training from validation examples
  on a held-out part; when either does better than chance by a binomial margin, the two sets come
  from different distributions (a different source, period or preprocessing), and the validation
  score says little about the training distribution or vice versa. The class mix is compared too.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import tensorflow as tf

from tfprod.doctor.finding import Finding
from tfprod.doctor.probe import Probe

#: share of validation examples also in training: a warning, then an error.
OVERLAP_WARNING, OVERLAP_ERROR = 0.01, 0.05
#: accuracy of telling the sets apart above which a shift is an error (a warning below).
SHIFT_ERROR = 0.75
#: smallest accuracy worth reporting, whatever the margin (a large sample detects tiny shifts).
SHIFT_MIN = 0.6
#: total variation distance between the class mixes from which it is reported.
LABEL_SHIFT = 0.2
Z = 3.0
MIN_EXAMPLES = 30
MAX_EXAMPLES = 1000
_PROJECTIONS = 64
_MAX_COLUMNS = 4096


def _digests(x: Any, n: int) -> list[bytes]:
    leaves = [np.ascontiguousarray(a) for a in tf.nest.flatten(x)]
    out = []
    for i in range(n):
        h = hashlib.blake2b(digest_size=16)
        for a in leaves:
            if a.dtype == object:  # a string input: each value's bytes, length-prefixed
                for v in np.asarray(a[i], dtype=object).reshape(-1):
                    b = v if isinstance(v, bytes) else str(v).encode()
                    h.update(len(b).to_bytes(8, "little") + b)
            else:
                h.update(a[i].tobytes())
        out.append(h.digest())
    return out


def check_overlap(probe: Probe, vx: Any, vy: Any) -> tuple[list[Finding], bool]:
    """Findings, and whether the check ran."""
    n_val = len(tf.nest.flatten(vx)[0])
    train = set(_digests(probe.x, probe.n))
    shared = [i for i, d in enumerate(_digests(vx, n_val)) if d in train]
    share = len(shared) / max(n_val, 1)
    values = {"shared": len(shared), "validation_examples": n_val, "train_examples": probe.n,
              "share": share}
    if share < OVERLAP_WARNING or len(shared) < 2:
        return [], True
    return [Finding(
        "validation_overlap", "error" if share >= OVERLAP_ERROR else "warning",
        "validation examples also in the training data",
        f"{len(shared)} of {n_val} validation examples ({share:.1%}) have features identical "
        f"to a training example (of {probe.n} read): they score what the model memorized, so "
        "validation loss/accuracy are optimistic and early stopping follows them",
        "split before any augmentation or oversampling, deduplicate first (hash the "
        "features), and split by entity (user, patient, source file) when examples repeat",
        values)], True


def _columns(x: Any, rng) -> list[np.ndarray | None]:
    """Per input, the flattened columns to compare (a random subset of very wide inputs)."""
    leaves = [a for a in tf.nest.flatten(x) if a.dtype.kind in "biuf"]
    width = sum(int(np.prod(a.shape[1:])) for a in leaves)
    out = []
    for a in leaves:
        d = int(np.prod(a.shape[1:]))
        keep = d if width <= _MAX_COLUMNS else max(1, _MAX_COLUMNS * d // width)
        out.append(None if keep >= d else np.sort(rng.choice(d, keep, replace=False)))
    return out


def _flat(x: Any, index: np.ndarray, columns: list[np.ndarray | None]) -> np.ndarray | None:
    leaves = [a for a in tf.nest.flatten(x) if a.dtype.kind in "biuf"]
    parts = []
    for a, cols in zip(leaves, columns, strict=True):
        flat = np.asarray(a[index]).reshape(len(index), -1)
        parts.append((flat if cols is None else flat[:, cols]).astype(np.float64))
    return np.concatenate(parts, axis=1) if parts else None


def _features(tx: np.ndarray, vx: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """Both sets standardized by the training statistics; wide inputs randomly projected."""
    mean, std = tx.mean(axis=0), tx.std(axis=0)
    keep = std > 1e-8
    if not keep.any():
        return tx[:, :0], vx[:, :0]
    floor = std[keep].mean()
    tz = (tx[:, keep] - mean[keep]) / np.maximum(std[keep], floor)
    vz = (vx[:, keep] - mean[keep]) / np.maximum(std[keep], floor)
    if tz.shape[1] > _PROJECTIONS:
        proj = rng.normal(size=(tz.shape[1], _PROJECTIONS)) / math.sqrt(tz.shape[1])
        tz, vz = tz @ proj, vz @ proj
    return tz, vz


def _two_sample(tz: np.ndarray, vz: np.ndarray, rng) -> dict[str, tuple[float, float]]:
    """Holdout accuracy of telling training (0) from validation (1), and its chance margin."""
    from sklearn.neighbors import KNeighborsClassifier, NearestCentroid

    x = np.concatenate([tz, vz])
    side = np.concatenate([np.zeros(len(tz), int), np.ones(len(vz), int)])
    hold = np.zeros(len(x), bool)
    for s in (0, 1):
        idx = rng.permutation(np.flatnonzero(side == s))
        hold[idx[: int(round(0.3 * len(idx)))]] = True
    train, test = np.flatnonzero(~hold), np.flatnonzero(hold)
    threshold = 0.5 + Z * math.sqrt(0.25 / len(test))
    out = {}
    for name, clf in (("nearest_centroid", NearestCentroid()),
                      ("knn", KNeighborsClassifier(n_neighbors=min(7, len(train))))):
        clf.fit(x[train], side[train])
        guess = clf.predict(x[test])
        # Balanced accuracy: both sets count equally however many examples each has.
        acc = float(np.mean([np.mean(guess[side[test] == s] == s) for s in (0, 1)]))
        out[name] = (acc, threshold)
    return out


def _class_mix(probe: Probe, y: np.ndarray) -> dict[int, float] | None:
    if probe.task.labels not in ("sparse", "onehot") or not isinstance(y, np.ndarray):
        return None
    yy = y.reshape(len(y), -1)
    ids = yy[:, 0].astype(np.int64) if yy.shape[1] == 1 else np.argmax(yy, axis=1)
    classes, counts = np.unique(ids, return_counts=True)
    return {int(c): n / len(ids) for c, n in zip(classes, counts, strict=True)}


def _column_shift(tx: np.ndarray, vx: np.ndarray, names: int) -> str:
    """The columns whose means moved most, in training standard deviations (tabular only)."""
    if tx.shape[1] > names:
        return ""
    std = np.maximum(tx.std(axis=0), 1e-12)
    moved = np.abs(vx.mean(axis=0) - tx.mean(axis=0)) / std
    ratio = np.maximum(vx.std(axis=0), 1e-12) / std
    worst = np.argsort(-np.maximum(moved, np.abs(np.log(ratio))))[:3]
    return "; largest moves: " + ", ".join(
        f"column {j} (mean {moved[j]:+.2g} std, spread x{ratio[j]:.2g})" for j in worst)


def check_shift(probe: Probe, vx: Any, vy: Any) -> tuple[list[Finding], bool]:
    """Findings, and whether the check ran (both sets need 30+ clean numeric examples)."""
    rng = np.random.default_rng(probe.seed)
    t_index = np.flatnonzero(probe.finite)
    n_val = len(tf.nest.flatten(vx)[0])
    v_finite = np.ones(n_val, bool)
    for a in tf.nest.flatten(vx):
        if a.dtype.kind == "f":
            v_finite &= np.isfinite(a.reshape(n_val, -1)).all(axis=1)
    v_index = np.flatnonzero(v_finite)
    m = min(len(t_index), len(v_index), MAX_EXAMPLES)
    if m < MIN_EXAMPLES:
        return [], False
    t_index = np.sort(rng.choice(t_index, m, replace=False))
    v_index = np.sort(rng.choice(v_index, m, replace=False))
    columns = _columns(probe.x, rng)
    if len(columns) != len([a for a in tf.nest.flatten(vx) if a.dtype.kind in "biuf"]):
        return [], False
    tx, vxf = _flat(probe.x, t_index, columns), _flat(vx, v_index, columns)
    if tx is None or vxf is None:
        return [], False
    tz, vz = _features(tx, vxf, rng)
    scores = _two_sample(tz, vz, rng) if tz.shape[1] else {}
    best = max(scores.values(), default=(0.5, 1.0))
    shifted = best[0] > best[1] and best[0] >= SHIFT_MIN
    mixes = (_class_mix(probe, probe.y[probe.finite]) if isinstance(probe.y, np.ndarray)
             else None), _class_mix(probe, vy)
    tvd = None
    if mixes[0] is not None and mixes[1] is not None:
        classes = set(mixes[0]) | set(mixes[1])
        tvd = 0.5 * sum(abs(mixes[0].get(c, 0) - mixes[1].get(c, 0)) for c in classes)
    label_shift = tvd is not None and tvd >= LABEL_SHIFT
    values = {"accuracy": {k: v[0] for k, v in scores.items()},
              "threshold": best[1], "examples_each": m, "class_mix_distance": tvd}
    if not shifted and not label_shift:
        return [], True
    parts = []
    if shifted:
        shown = ", ".join(f"{k} {v[0]:.0%}" for k, v in scores.items())
        parts.append(f"classifiers tell validation from training examples apart ({shown} "
                     f"balanced accuracy on a holdout of {m} + {m} examples; chance 50%, "
                     f"margin {best[1]:.0%}){_column_shift(tx, vxf, 32)}")
    if label_shift:
        top = sorted(set(mixes[0]) | set(mixes[1]),
                     key=lambda c: -abs(mixes[0].get(c, 0) - mixes[1].get(c, 0)))[:3]
        parts.append(f"the class mix differs by {tvd:.0%} (total variation): " + ", ".join(
            f"class {c} {mixes[0].get(c, 0):.0%} in training vs {mixes[1].get(c, 0):.0%}"
            for c in top))
    severity = "error" if (shifted and best[0] >= SHIFT_ERROR) or (
        tvd is not None and tvd >= 2 * LABEL_SHIFT) else "warning"
    return [Finding(
        "validation_shift", severity, "validation data from a different distribution",
        "; ".join(parts) + ": the validation score does not measure the model on data like its "
        "training data (nor the reverse)",
        "split training and validation from the same source at random (stratified by class), "
        "with the same preprocessing; if production data really looks like the validation "
        "data, train on some of it too", values)], True

