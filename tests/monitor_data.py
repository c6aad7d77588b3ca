"""Synthetic tables with planted shifts, for the drift tests and the benchmark."""

from __future__ import annotations

import numpy as np

CATEGORIES = np.array(["a", "b", "c", "d"], dtype=object)
REFERENCE_WEIGHTS = [0.4, 0.3, 0.2, 0.1]
SHIFTED_WEIGHTS = [0.25, 0.25, 0.25, 0.25]


def planted_table(rng: np.random.Generator, n: int, *, mean_shift: bool = False,
                  variance: bool = False, categorical: bool = False, rotation: bool = False,
                  numeric: int = 45) -> dict[str, np.ndarray]:
    """50 features: ``f0..f{numeric-1}`` N(0, 1), ``scale`` N(0, 1), ``a``/``b`` correlated
    (0.8), ``color`` categorical, ``count`` small integers.

    Shifts: ``mean_shift`` +0.2 std in f0, f1, f2; ``variance`` std x1.5 in ``scale``;
    ``categorical`` re-weights ``color``; ``rotation`` flips the sign of b (correlation 0.8 ->
    -0.8, both marginals unchanged).
    """
    t = {f"f{i}": rng.standard_normal(n) for i in range(numeric)}
    if mean_shift:
        for i in range(3):
            t[f"f{i}"] += 0.2
    t["scale"] = rng.standard_normal(n) * (1.5 if variance else 1.0)
    ab = rng.multivariate_normal([0, 0], [[1, 0.8], [0.8, 1]], n)
    if rotation:
        ab[:, 1] = -ab[:, 1]
    t["a"], t["b"] = ab[:, 0], ab[:, 1]
    t["color"] = rng.choice(CATEGORIES, n, p=SHIFTED_WEIGHTS if categorical else REFERENCE_WEIGHTS)
    t["count"] = rng.poisson(3, n)
    return t
