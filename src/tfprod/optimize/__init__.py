"""Smaller and faster variants of a trained Keras model, measured side by side.

- :func:`optimize`: builds every variant (LiteRT float32 / dynamic-range / float16 / int8,
  Keras int8, XLA, pruned + int8), measures them, recommends one per target (server, edge).
- :func:`prune`, :func:`prune_low_magnitude`, :func:`strip_pruning`, :class:`PolynomialDecay`,
  :func:`sparsity_report`: Keras 3 magnitude pruning.
- :class:`OptimizeReport`: the comparison table.

Names load on first use: importing this package does not import TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "DEFAULT_VARIANTS": "variants",
    "OptimizeReport": "report",
    "PolynomialDecay": "pruning",
    "optimize": "compare",
    "prune": "pruning",
    "prune_low_magnitude": "pruning",
    "sparsity_report": "pruning",
    "strip_pruning": "pruning",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'tfprod.optimize' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tfprod.optimize.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
