"""A dataset as named columns, and the 1-D columns that drift tests compare.

A :data:`Table` is ``{name: array [n, ...]}`` with one row per example, as a model's signature
takes its inputs. :func:`test_columns` turns each feature into what the tests compare:

- a scalar per example (``[n]`` or ``[n, 1]``): the feature itself, ``numeric`` or
  ``categorical`` (strings, booleans, integers with at most ``CATEGORICAL_MAX_VALUES`` values in
  the reference);
- a short vector (``[n, k]``, ``k <= VECTOR_MAX``): one column per element, ``name[i]``;
- anything larger (images, embeddings, long sequences): its per-example mean and standard
  deviation, ``name:mean`` and ``name:std`` (brightness and contrast for images). Such
  features are compared as a whole by the multivariate test, on the model's embeddings when the
  version has them: what the model sees, not single pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from tfprod.errors import TfprodError

Table = dict[str, np.ndarray]
CATEGORICAL_MAX_VALUES = 20
VECTOR_MAX = 32


@dataclass(frozen=True)
class Column:
    """One tested column: its ``name``, ``kind`` and where it comes from."""

    name: str
    kind: str        # "numeric" | "categorical"
    feature: str     # the feature it is derived from
    part: str        # "value" | "element" | "mean" | "std"
    index: int = 0


def rows(table: Mapping[str, np.ndarray]) -> int:
    """The number of rows; every feature must have it."""
    sizes = {k: len(v) for k, v in table.items()}
    if len(set(sizes.values())) > 1:
        raise TfprodError(f"features have different numbers of rows: {sizes}; every feature "
                          "needs one value per example")
    return next(iter(sizes.values()), 0)


def is_text(values: np.ndarray) -> bool:
    return np.asarray(values).dtype.kind in "OSU"


def plan_columns(reference: Mapping[str, np.ndarray]) -> list[Column]:
    """The tested columns of a table, decided on the reference."""
    out: list[Column] = []
    for name in reference:
        x = np.asarray(reference[name])
        width = int(np.prod(x.shape[1:])) if x.ndim > 1 else 1
        if is_text(x) or x.dtype.kind == "b":
            if width == 1:
                out.append(Column(name, "categorical", name, "value"))
            continue  # token lists and such: validated, not drift-tested
        if width == 1:
            kind = "numeric"
            if x.dtype.kind in "iu" and np.unique(x.ravel()[:100_000]).size <= \
                    CATEGORICAL_MAX_VALUES:
                kind = "categorical"
            out.append(Column(name, kind, name, "value"))
        elif x.ndim == 2 and width <= VECTOR_MAX:
            out += [Column(f"{name}[{i}]", "numeric", name, "element", i) for i in range(width)]
        else:
            out += [Column(f"{name}:mean", "numeric", name, "mean"),
                    Column(f"{name}:std", "numeric", name, "std")]
    return out


def column_values(table: Mapping[str, np.ndarray], column: Column) -> np.ndarray:
    """The 1-D values of ``column`` in ``table``."""
    x = np.asarray(table[column.feature])
    if column.part == "value":
        return x.reshape(len(x))
    if column.part == "element":
        return x[:, column.index]
    flat = x.reshape(len(x), -1)
    if flat.dtype.kind != "f":
        flat = flat.astype(np.float32)
    return flat.mean(axis=1) if column.part == "mean" else flat.std(axis=1)


def check_same_features(reference: Mapping[str, np.ndarray], current: Mapping[str, np.ndarray],
                        *, where: str = "current") -> None:
    """Raise a one-line TfprodError when the two tables do not have the same features/shapes."""
    missing = sorted(set(reference) - set(current))
    extra = sorted(set(current) - set(reference))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"extra {', '.join(extra)}")
        raise TfprodError(f"{where} has different features than the reference ({'; '.join(parts)}"
                          f"); compare data with the same columns (reference: "
                          f"{', '.join(sorted(reference)) or 'none'})")
    for name in reference:
        a, b = np.asarray(reference[name]), np.asarray(current[name])
        if a.shape[1:] != b.shape[1:] and not (a.size and b.size and
                                               np.prod(a.shape[1:]) == np.prod(b.shape[1:]) == 1):
            raise TfprodError(f"feature {name!r} has shape {list(b.shape[1:])} per example in "
                              f"{where} but {list(a.shape[1:])} in the reference; reshape it "
                              "to the reference's shape")
