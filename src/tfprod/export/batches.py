"""A batch of examples for a predictor: one array, or a dict of arrays by input name.

Models with one input take an array ``(n, ...)``; models with several named inputs (a tabular
model's columns, a recommender's user and item ids) take ``{name: (n, ...)}``. These helpers
slice, count and check either form, so predictors, ``tfprod predict`` and ``tfprod optimize``
treat both alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tfprod.errors import TfprodError

Batch = Any  # np.ndarray | dict[str, np.ndarray]


def count(x: Batch) -> int:
    """Examples in ``x``."""
    if isinstance(x, Mapping):
        return len(next(iter(x.values()))) if x else 0
    return len(x)


def take(x: Batch, start: int, stop: int) -> Batch:
    """Examples ``start:stop`` of ``x``."""
    if isinstance(x, Mapping):
        return {k: v[start:stop] for k, v in x.items()}
    return x[start:stop]


def resize(x: Batch, n: int) -> Batch:
    """``x`` repeated or cut to exactly ``n`` examples."""
    if isinstance(x, Mapping):
        return {k: np.resize(v, (n, *np.shape(v)[1:])) for k, v in x.items()}
    return np.resize(x, (n, *np.shape(x)[1:]))


def concatenate(parts: Sequence[Batch]) -> Batch:
    """Batches joined along the examples."""
    if parts and isinstance(parts[0], Mapping):
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return np.concatenate(parts)


def as_arrays(x: Any) -> Batch:
    """``x`` (arrays, tensors, or a dict of them) as numpy."""
    if isinstance(x, Mapping):
        return {k: _numpy(v) for k, v in x.items()}
    return _numpy(x)


def _numpy(v: Any) -> np.ndarray:
    return v.numpy() if hasattr(v, "numpy") else np.asarray(v)


def check_named(x: Batch, shapes: Mapping[str, Sequence[int | None]], *, what: str) -> None:
    """Raises a one-line error unless ``x`` is a dict with every input of ``shapes``, each a
    batch of examples of its shape, all of the same size."""
    if not isinstance(x, Mapping):
        raise TfprodError(f"{what} is one array; the model takes several named inputs "
                          f"{sorted(shapes)}: pass a dict (a .npz, a TFRecord folder or a CSV "
                          "with those names)")
    missing = sorted(set(shapes) - set(x))
    if missing:
        raise TfprodError(f"{what} lacks the model input(s) {missing}; it has {sorted(x)}")
    sizes = {k: len(x[k]) for k in shapes}
    if len(set(sizes.values())) > 1:
        raise TfprodError(f"{what} has inputs of different lengths: {sizes}")
    for name, expected in shapes.items():
        got = tuple(np.shape(x[name]))[1:]
        if len(got) == len(expected) - 1 and tuple(expected)[-1] == 1:
            continue  # a column for a (None, 1) input: Keras adds the axis
        if len(got) != len(expected) or any(e is not None and e != g
                                            for e, g in zip(expected, got, strict=True)):
            raise TfprodError(f"{what} input {name!r} has examples of shape {got}; the model "
                              f"takes {tuple(expected)}")
