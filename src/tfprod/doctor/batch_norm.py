"""BatchNormalization with batches too small for its statistics.

In training a BatchNormalization layer normalizes each channel by the mean and variance of the
current batch (over the batch and any spatial axes). With one or two values per channel that
normalization erases the input (one value: the output is the layer's offset; two: it is +-1),
and with a handful the statistics are so noisy that the moving averages used at inference
describe other data than the model trained on.
"""

from __future__ import annotations

import math

from tfprod.doctor.finding import Finding
from tfprod.doctor.probe import Probe

#: batch sizes below this are noisy for BatchNorm (a warning).
SMALL_BATCH = 8
#: values per channel at or below this erase the input (an error).
ERASED = 2
_BN = ("BatchNormalization", "SyncBatchNormalization")


def _values_per_channel(layer, batch_size: int) -> int:
    """Values each channel's statistics are computed over, in one training batch."""
    try:
        shape = tuple(layer.input.shape)
    except (AttributeError, ValueError):
        return batch_size
    axes = layer.axis if isinstance(layer.axis, list | tuple) else [layer.axis]
    axes = {a % len(shape) for a in axes}
    spatial = [d for i, d in enumerate(shape) if i not in axes and i != 0]
    if any(d is None for d in spatial):
        return batch_size
    return batch_size * math.prod(spatial)


def check_batch_norm(probe: Probe) -> tuple[list[Finding], bool]:
    """Findings, and whether the check ran (the model has a trainable BatchNormalization)."""
    layers = [layer for layer in probe.model._flatten_layers(include_self=False)
              if type(layer).__name__ in _BN and layer.trainable]
    if not layers:
        return [], False
    bs = probe.batch_size
    per_channel = {layer.name: _values_per_channel(layer, bs) for layer in layers}
    fewest = min(per_channel.values())
    values = {"batch_size": bs, "values_per_channel": per_channel}
    names = ", ".join(repr(layer.name) for layer in layers[:4]) + (
        f" (and {len(layers) - 4} more)" if len(layers) > 4 else "")
    fix = (f"use batches of {SMALL_BATCH * 4}+ (accumulate gradients if memory is short), or "
           "replace BatchNormalization with LayerNormalization / GroupNormalization, which do "
           "not depend on the batch; when fine-tuning, freeze it (layer.trainable = False)")
    if fewest <= ERASED:
        erased = [k for k, v in per_channel.items() if v <= ERASED]
        effect = ("each channel becomes the layer's offset (beta): the input is erased"
                  if fewest == 1 else "each channel becomes +-1: only the sign survives")
        return [Finding(
            "batch_norm", "error", f"BatchNormalization on batches of {bs}",
            f"{len(erased)} BatchNormalization layer(s) ({', '.join(map(repr, erased[:4]))}) "
            f"normalize each channel over {fewest} value(s) per training batch: {effect}, and "
            "the moving averages used at inference describe other numbers",
            fix, values)], True
    if bs < SMALL_BATCH:
        return [Finding(
            "batch_norm", "warning", f"BatchNormalization on small batches ({bs})",
            f"{names} compute their training statistics on batches of {bs} ({fewest}+ values "
            "per channel): the statistics are noisy, so training is noisy and inference (with "
            "the moving averages) behaves differently from training",
            fix, values)], True
    return [], True
