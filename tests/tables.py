"""The user's own tables for `tfprod train`: scikit-learn's bundled datasets as CSV files and
TFRecord folders (nothing is downloaded).

- ``wine`` (178 rows, 13 features): 3 classes, integer labels 0..2.
- ``wine_names``: the same rows with the class names "barolo", "grignolino", "barbera".
- ``cancer`` (569 rows, the first 10 features): 2 classes.
- ``digits12`` (720 rows, 16 pixels: the 8x8 digits pooled to 4x4): 12 classes, the digits
  0..9 and two made by mirroring ones and sevens (classes 10 and 11).
- ``diabetes`` (442 rows, 10 features): a regression target of 25..346.

Each table is ``NAME.csv`` (features ``f0..``, then ``label``) and ``NAME_tfr/`` (one float32
feature ``x`` with the row's features, and ``label``).
"""

from __future__ import annotations

import csv
import os

import numpy as np

NAMES = ("barolo", "grignolino", "barbera")


def tables() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (features [n, d] float, labels [n])."""
    from sklearn import datasets

    wine = datasets.load_wine()
    cancer = datasets.load_breast_cancer()
    diabetes = datasets.load_diabetes()
    digits = datasets.load_digits()
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for cls in range(10):
        pick = rng.permutation(np.flatnonzero(digits.target == cls))[:60]
        xs.append(digits.data[pick])
        ys.append(np.full(60, cls))
    for cls, source in ((10, 1), (11, 7)):
        mirrored = xs[source].reshape(-1, 8, 8)[:, :, ::-1].reshape(-1, 64)
        xs.append(mirrored)
        ys.append(np.full(len(mirrored), cls))
    pixels = np.concatenate(xs).reshape(-1, 4, 2, 4, 2).sum(axis=(2, 4))  # 16 columns, not 64
    return {
        "wine": (wine.data, wine.target),
        "wine_names": (wine.data, np.array(NAMES)[wine.target]),
        "cancer": (cancer.data[:, :10], cancer.target),
        "digits12": (pixels.reshape(len(pixels), 16), np.concatenate(ys)),
        "diabetes": (diabetes.data, diabetes.target),
    }


def write_csv(path: str | os.PathLike, x: np.ndarray, y: np.ndarray) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([f"f{i}" for i in range(x.shape[1])] + ["label"])
        for row, label in zip(x, y, strict=True):
            writer.writerow([f"{v:.6g}" for v in row] + [label])
    return os.fspath(path)


def write_tables(root: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Writes every table; returns name -> {"csv": path, "tfrecord": folder}."""
    from tfprod.data import write_tfrecords

    out = {}
    for name, (x, y) in tables().items():
        base = os.path.join(os.fspath(root), name)
        label = y.astype(object) if y.dtype.kind == "U" else y
        write_tfrecords(base + "_tfr", {"x": x.astype(np.float32), "label": label},
                        num_shards=2)
        out[name] = {"csv": write_csv(base + ".csv", x, y), "tfrecord": base + "_tfr"}
    return out
