"""Smaller and faster variants of a trained Keras model, measured side by side.

- :func:`optimize`: builds every variant (LiteRT float32 / dynamic-range / float16 / int8,
  Keras int8, XLA, pruned + int8), measures them, recommends one per target (server, edge).
- :func:`prune`, :func:`prune_low_magnitude`, :func:`strip_pruning`, :class:`PolynomialDecay`,
  :func:`sparsity_report`: Keras 3 magnitude pruning.
- :class:`OptimizeReport`: the comparison table.

Names load on first use: importing this package does not import TensorFlow.
"""

from tfprod.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "DEFAULT_VARIANTS": "variants",
    "OptimizeReport": "report",
    "PolynomialDecay": "pruning",
    "optimize": "compare",
    "prune": "pruning",
    "prune_low_magnitude": "pruning",
    "sparsity_report": "pruning",
    "strip_pruning": "pruning",
})
