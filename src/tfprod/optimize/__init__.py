"""Smaller and faster variants of a trained Keras model, measured side by side.

- Pruning: ``tfprod.optimize.pruning``.
- Variants (LiteRT float32 / dynamic-range / float16 / int8, Keras int8, XLA, pruned + int8) and
  the comparison table with one recommendation per target: ``tfprod.optimize.compare.optimize``.

Submodules import TensorFlow; this package module does not.
"""
